"""ThroughputMonitor and ProfilerSummary on a tiny CPU fit; the execution-summary sweep on a
hand-made trace whose answer is known."""

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lvdm.training.callbacks.profiler import CATEGORIES, ProfilerSummary, execution_summary
from lvdm.training.callbacks.throughput import ThroughputMonitor
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.perf.step_flops import dit_training_flops
from lvdm.text.words import WordTextEncoder


class Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"video": torch.rand(3, 4, 16, 16) * 2 - 1, "caption": ["a red square", "a blue circle"][i % 2]}


def _collate(items):
    return {"video": torch.stack([x["video"] for x in items]), "caption": [x["caption"] for x in items]}


def _fit(tmp_path, callbacks, steps):
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=2, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        callbacks=callbacks, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(module, DataLoader(Batches(), batch_size=4, collate_fn=_collate))
    return module, trainer


def test_throughput_monitor_logs_flops_of_the_real_shapes(tmp_path):
    monitor = ThroughputMonitor(window=2, peak_flops=1e12)
    module, trainer = _fit(tmp_path, [monitor], steps=7)
    assert len(monitor.history) == 3  # step 1 skipped, then windows of 2 steps
    row = monitor.history[-1]
    # 2 steps × 4 samples of latent 4×16×16 (grid 2×4×4 = 32 tokens), captions of 8 tokens
    flops = 2 * dit_training_flops(module.denoiser, (4, 16, 16), 8, batch_size=4)
    seconds = row["perf/step_time_ms"] * 2 / 1000
    assert row["perf/tflops_per_device"] == pytest.approx(flops / seconds / 1e12, rel=1e-6)
    assert row["perf/samples_per_sec"] == pytest.approx(8 / seconds, rel=1e-6)
    assert row["perf/tokens_per_sec"] == pytest.approx(8 * 32 / seconds, rel=1e-6)
    assert row["perf/mfu"] == pytest.approx(row["perf/tflops_per_device"], rel=1e-6)  # peak = 1 TFLOP/s
    assert "perf/mfu" in trainer.logged_metrics


def test_throughput_monitor_rejects_unknown_device():
    with pytest.raises(ValueError, match="unknown device_kind"):
        ThroughputMonitor(device_kind="tpu-v9")


def test_profiler_summary_writes_trace_and_table(tmp_path):
    prof = ProfilerSummary(dirpath=str(tmp_path / "prof"), wait=1, warmup=1, active=2)
    _fit(tmp_path, [prof], steps=5)
    out = tmp_path / "prof"
    trace = json.loads((out / "trace.json").read_text())
    assert any(e.get("cat") == "cpu_op" for e in trace["traceEvents"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    shares = {k: v["percent"] for k, v in summary["categories"].items()}
    assert list(shares) == list(CATEGORIES)
    assert sum(shares.values()) == pytest.approx(100.0, rel=1e-9)
    assert shares["Kernel"] == 0 and shares["CPU Exec"] > 20  # a CPU run: host work only
    assert shares["DataLoader"] > 0
    assert "| Average Step Time |" in (out / "summary.md").read_text()


def test_execution_summary_priorities_on_a_known_trace():
    def ev(name, cat, ts, dur):
        return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur}

    trace = {"traceEvents": [
        ev("ProfilerStep#1", "user_annotation", 0, 100),
        ev("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "user_annotation", 0, 10),
        ev("aten::mm", "cpu_op", 10, 60),           # host op, partly hidden by GPU work
        ev("cudaLaunchKernel", "cuda_runtime", 15, 5),
        ev("sm90_gemm", "kernel", 20, 40),          # 20..60 kernel
        ev("Memcpy HtoD", "gpu_memcpy", 50, 20),    # 60..70 memcpy (50..60 under the kernel)
        ev("ncclKernel_AllReduce", "kernel", 75, 5),
        ev("Memset", "gpu_memset", 85, 5),
    ]}
    s = execution_summary(trace)["categories"]
    got = {k: v["time_us"] for k, v in s.items()}
    assert got == {"Kernel": 40, "Memcpy": 10, "Memset": 5, "Communication": 5, "Runtime": 5,
                   "DataLoader": 10, "CPU Exec": 5, "Other": 20}
