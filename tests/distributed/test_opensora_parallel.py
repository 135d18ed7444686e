"""The tiny Open-Sora video phase (an STDiT v1.0) trains with sequence parallelism over 2 CPU
processes, activation checkpointing and the throughput monitor reporting MFU: the features
every backbone gets from the contract (lvdm.models.contract), on an Open-Sora recipe."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _lvdm(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lvdm.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ))
    if proc.returncode:
        raise AssertionError(f"lvdm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _recipe(tmp_path: Path) -> Path:
    """recipes/opensora/tiny/phase2_video.yaml without its phase-1 hand-off, with SP(2), AC and
    the throughput monitor (a stated peak, as CPUs have none in the table), logging to CSV."""
    cfg = yaml.safe_load((ROOT / "recipes/opensora/tiny/phase2_video.yaml").read_text())
    trainer = cfg["trainer"]
    trainer.update(devices=2, strategy="ddp", max_steps=3, default_root_dir=str(tmp_path / "run"),
                   logger={"class_path": "lightning.pytorch.loggers.CSVLogger",
                           "init_args": {"save_dir": str(tmp_path / "logs"), "name": "tiny"}})
    trainer["callbacks"] = [
        {"class_path": "lvdm.training.callbacks.parallel.SequenceParallel", "init_args": {"size": 2, "mode": "ulysses"}},
        {"class_path": "lvdm.training.callbacks.parallel.ActivationCheckpointing", "init_args": {"fraction": 1.0}},
        {"class_path": "lvdm.training.callbacks.throughput.ThroughputMonitor",
         "init_args": {"window": 1, "skip_first": 1, "peak_flops": 1.0e12}},
    ]
    cfg["data"]["init_args"]["train_shards"] = str(tmp_path / "shapes" / "train-*.tar")
    path = tmp_path / "phase2_sp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_opensora_phase_trains_with_sequence_parallelism_and_reports_mfu(tmp_path):
    _lvdm("data", "synth", "--out", str(tmp_path / "shapes"), "--num_train", "16", "--num_val", "2",
          "--shard_size", "16")
    proc = _lvdm("fit", "--config", str(_recipe(tmp_path)))
    assert "sequence parallelism: 1 data-parallel replica(s) × 2 ranks (ulysses)" in proc.stdout + proc.stderr
    rows = list(csv.DictReader(next((tmp_path / "logs").rglob("metrics.csv")).open()))
    mfu = [float(r["perf/mfu"]) for r in rows if r.get("perf/mfu")]
    assert mfu and all(m > 0 for m in mfu), rows
