"""Bucketed training on two CPU processes (gloo): DDP and DeepSpeed ZeRO-2 with two
data-parallel ranks, and one Ulysses sequence-parallel group of two. Both run across epoch ends without hanging, every rank
takes the same number of steps, and the ranks of the sequence-parallel group read the same
batches (SequenceParallel checks it on the first batch; tests/data/test_bucket_stream.py
checks whole streams in one process, fast)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# video-only buckets for sequence parallelism: Ulysses splits whole latent frames, and an
# image (one frame) cannot be split over two ranks
VIDEO_BUCKETS = json.dumps({"32": {4: [1.0, 2], 8: [0.5, 2]}, "16": {8: [1.0, 4]}})


def _fit(tmp_path, *extra, strategy=("--trainer.strategy", "ddp")):
    data = tmp_path / "mixed"
    subprocess.run([sys.executable, "-m", "lvdm.cli", "data", "synth-mixed", "--out", str(data), "--num_train", "40",
                    "--num_val", "4", "--shard_size", "10"], cwd=ROOT, check=True, capture_output=True)
    run = tmp_path / "run"
    steps = tmp_path / "steps"
    args = [sys.executable, "-m", "lvdm.cli", "fit", "--config", "recipes/tiny/buckets.yaml", *strategy,
            "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--data.init_args.train_shards", str(data / "train-*.tar"),
            "--data.init_args.val_shards", str(data / "val-*.tar"),
            "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "8",
            "--data.init_args.shuffle_buffer", "8",
            "--model.init_args.denoiser.init_args.hidden_size", "32", "--model.init_args.denoiser.init_args.depth", "1",
            "--trainer.max_steps", "5", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2",
            "--trainer.logger", "false",
            "--trainer.callbacks+=lvdm.training.callbacks.steps.StepCounter", f"--trainer.callbacks.out={steps}",
            "--trainer.default_root_dir", str(run), *extra]
    # a rank left waiting in a collective would hang: the timeout turns that into a failure
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, {p.name: json.loads(p.read_text()) for p in sorted(steps.glob("rank*.json"))}


# DeepSpeed ZeRO-2 through the CPU stand-in of Lightning's DeepSpeedStrategy, in float32
ZERO2_ON_CPU = ["--config", "strategies/zero2.yaml",
                "--trainer.strategy.class_path", "lvdm.distributed.cpu_deepspeed.CPUDeepSpeedStrategy",
                "--trainer.strategy.init_args.precision_plugin.init_args.precision", "32-true"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_data_parallel_ranks_equal_steps_across_epochs(strategy, tmp_path):
    if strategy == "zero2":
        pytest.importorskip("deepspeed")
    _, ranks = _fit(tmp_path, **({"strategy": ZERO2_ON_CPU} if strategy == "zero2" else {}))
    assert set(ranks) == {"rank0.json", "rank1.json"}
    # 2 batches an epoch on each of 2 ranks: 5 steps span 3 epochs
    assert [r["steps"] for r in ranks.values()] == [5, 5] and [r["epochs"] for r in ranks.values()] == [3, 3]
    assert ranks["rank0.json"]["shapes"] != ranks["rank1.json"]["shapes"] or \
        ranks["rank0.json"]["keys"] != ranks["rank1.json"]["keys"]  # each rank its own data


@pytest.mark.slow
def test_ulysses_group_of_two_reads_identical_batches(tmp_path):
    proc, ranks = _fit(tmp_path, "--config", "callbacks/sequence_parallel.yaml",
                       "--data.init_args.buckets.init_args.resolutions", VIDEO_BUCKETS)
    assert "1 data-parallel replica(s) × 2 ranks (ulysses)" in proc.stdout + proc.stderr
    first, second = ranks.values()
    assert first["steps"] == second["steps"] == 5
    assert first["keys"] == second["keys"] and first["shapes"] == second["shapes"]
    assert len(set(map(tuple, first["shapes"]))) >= 2
