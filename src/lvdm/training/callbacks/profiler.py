"""Where the step time goes: a ``torch.profiler`` window with an execution summary.

The summary has the categories of the PyTorch profiler's TensorBoard "Execution Summary" that
the Open-Sora report uses to show a training step is kernel-bound (93.9% kernel, 0.6% memcpy,
0.2% communication, 4.6% CPU exec): each instant of a step is given to the highest-priority
activity running then —

    Kernel > Memcpy > Memset > Communication > Runtime > DataLoader > CPU Exec > Other

GPU work wins over host work because host work that overlaps a running kernel costs nothing.
Communication is NCCL kernels on a GPU and gloo / c10d collectives on the host. On a CPU-only
run there are no kernels: the shares are host shares (CPU Exec, DataLoader, Communication).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

CATEGORIES = ("Kernel", "Memcpy", "Memset", "Communication", "Runtime", "DataLoader", "CPU Exec", "Other")
_COMM_WORDS = ("nccl", "gloo", "c10d::", "allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter",
               "broadcast", "all_to_all", "alltoall")


def _category(event: dict) -> Optional[str]:
    cat = str(event.get("cat", "")).lower()
    name = str(event.get("name", "")).lower()
    if cat == "kernel":
        return "Communication" if "nccl" in name else "Kernel"
    if cat == "gpu_memcpy":
        return "Memcpy"
    if cat == "gpu_memset":
        return "Memset"
    if cat in ("cuda_runtime", "cuda_driver"):
        return "Runtime"
    if cat in ("cpu_op", "user_annotation", "python_function"):
        if name.startswith("profilerstep#"):
            return None
        if "dataloader" in name:
            return "DataLoader"
        if any(w in name for w in _COMM_WORDS):
            return "Communication"
        if cat == "python_function":
            return None  # python frames cover everything; they are not execution by themselves
        return "CPU Exec"
    return None


def execution_summary(trace: dict | str | Path) -> dict[str, Any]:
    """Execution summary of a Chrome trace written by ``torch.profiler``.

    Args:
        trace: the trace dict, or the path of its JSON file.

    Returns:
        ``{"steps": n, "step_time_us": mean step time, "categories": {name: {"time_us": mean
        per step, "percent": share}}}`` over the ``ProfilerStep#`` windows of the trace.
    """
    if not isinstance(trace, dict):
        path = Path(trace)
        if not path.is_file():
            raise FileNotFoundError(f"trace file {str(path)!r} does not exist")
        trace = json.loads(path.read_text())
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    steps = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        for e in events
        if str(e.get("name", "")).startswith("ProfilerStep#")
    )
    if not steps:
        raise ValueError("the trace has no ProfilerStep# windows: profile with a schedule and call step()")
    intervals = []
    for e in events:
        category = _category(e)
        if category is not None:
            start = float(e["ts"])
            intervals.append((start, start + float(e["dur"]), CATEGORIES.index(category)))
    totals = [0.0] * len(CATEGORIES)
    for s0, s1 in steps:
        # sweep the step window: each elementary segment goes to its highest-priority activity
        points = []
        for a, b, c in intervals:
            if b > s0 and a < s1:
                points.append((max(a, s0), 0, c))
                points.append((min(b, s1), 1, c))
        points.sort()
        active = [0] * len(CATEGORIES)
        last = s0
        for t, kind, c in points:
            if t > last:
                top = next((i for i, n in enumerate(active) if n > 0), CATEGORIES.index("Other"))
                totals[top] += t - last
                last = t
            active[c] += 1 if kind == 0 else -1
        if s1 > last:
            top = next((i for i, n in enumerate(active) if n > 0), CATEGORIES.index("Other"))
            totals[top] += s1 - last
    n = len(steps)
    step_time = sum(b - a for a, b in steps) / n
    return {
        "steps": n,
        "step_time_us": step_time,
        "categories": {
            name: {"time_us": totals[i] / n, "percent": 100.0 * totals[i] / n / step_time if step_time else 0.0}
            for i, name in enumerate(CATEGORIES)
        },
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as the table of the Open-Sora report (category, µs per step, %)."""
    rows = ["| Category | Time Duration (us) | Percentage (%) |", "|---|---:|---:|"]
    rows.append(f"| Average Step Time | {summary['step_time_us']:,.0f} | 100 |")
    for name, value in summary["categories"].items():
        rows.append(f"| {name} | {value['time_us']:,.0f} | {value['percent']:.2f} |")
    return "\n".join(rows)


class ProfilerSummary(L.Callback):
    """Profile a window of training steps with ``torch.profiler``; write the Chrome trace
    (``trace.json``, open it in Perfetto or ``chrome://tracing``) and the execution summary
    (``summary.md``, ``summary.json``) to ``dirpath``.

    Lightning's ``profiler="pytorch"`` writes traces but no summary; this callback owns the
    profiler so that the summary is computed from exactly the profiled steps.

    Args:
        dirpath: output folder.
        wait: training steps skipped before profiling starts.
        warmup: steps traced but discarded (the profiler's own start-up cost).
        active: steps recorded and summarised.
        record_shapes: record operator input shapes in the trace.
        with_stack: record Python stacks (large traces).
    """

    def __init__(
        self,
        dirpath: str = "profile",
        wait: int = 2,
        warmup: int = 1,
        active: int = 3,
        record_shapes: bool = False,
        with_stack: bool = False,
    ):
        super().__init__()
        if active < 1 or wait < 0 or warmup < 0:
            raise ValueError(f"need active >= 1 and wait, warmup >= 0 (got {wait=}, {warmup=}, {active=})")
        self.dirpath = Path(dirpath)
        self.wait, self.warmup, self.active = wait, warmup, active
        self.record_shapes = record_shapes
        self.with_stack = with_stack
        self.summary: Optional[dict[str, Any]] = None
        self._profiler: Optional[torch.profiler.profile] = None

    def _on_trace_ready(self, prof: torch.profiler.profile) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        trace_path = self.dirpath / "trace.json"
        prof.export_chrome_trace(str(trace_path))
        self.summary = execution_summary(trace_path)
        (self.dirpath / "summary.json").write_text(json.dumps(self.summary, indent=2))
        (self.dirpath / "summary.md").write_text(summary_markdown(self.summary) + "\n")

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.global_rank != 0:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if pl_module.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1),
            on_trace_ready=self._on_trace_ready,
            record_shapes=self.record_shapes,
            with_stack=self.with_stack,
        )
        self._profiler.start()
        self._done_after = self.wait + self.warmup + self.active

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._profiler is None:
            return
        self._profiler.step()
        self._done_after -= 1
        if self._done_after <= 0:
            self._profiler.stop()
            self._profiler = None

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._profiler is not None:  # training ended inside the window: keep what was recorded
            self._profiler.stop()
            self._profiler = None

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)  # a crash inside the window: stop the profiler all the same
