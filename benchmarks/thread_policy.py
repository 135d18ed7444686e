"""Training speed of the tiny recipe with torch's default thread count against lvdm's thread
policy (:func:`lvdm.utils.thread_plan`), on an idle machine and next to CPU-bound processes.

Each run is a fresh ``lvdm fit --config recipes/tiny/adaln.yaml`` process (the thread count is
per process) for ``--steps`` steps on the synthetic shapes; the seconds per step are timed from
the end of step ``--warmup`` to the end of the last one, so start-up is not counted.
``old`` is lvdm before the policy (``LVDM_THREADS=off``: torch's defaults, one spinning
OpenMP thread per core), ``policy`` lets the CLI decide (threads and ``OMP_WAIT_POLICY``).
``--busy`` starts that many ``while True: pass`` processes for the loaded rows and stops them
after.

Usage: ``python benchmarks/thread_policy.py [--steps 40] [--warmup 5] [--busy 1] [--batch_size 16] [--out DIR]``.
Numbers vary with whatever else runs on the machine: report them with its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lvdm.utils import THREAD_ENV  # noqa: E402


class StepTimer(L.Callback):
    """Writes the end time of every training step to ``$LVDM_STEP_TIMES`` (JSON), with the
    thread count and OpenMP wait policy the run trained with."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        import torch

        Path(os.environ["LVDM_STEP_TIMES"]).write_text(json.dumps({
            "times": self.times, "threads": torch.get_num_threads(), "wait": os.environ.get("OMP_WAIT_POLICY", "default")}))


def clean_env() -> dict:
    """This environment without thread settings, with this checkout's ``src`` and ``benchmarks``
    first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in (*THREAD_ENV, "OMP_WAIT_POLICY", "LVDM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks"), env.get("PYTHONPATH", "")])
    return env


def fit(data: Path, run: Path, steps: int, policy: bool, batch_size: int = 16) -> dict:
    """One ``lvdm fit`` of the tiny recipe (at ``batch_size``), with or without the thread policy."""
    env = clean_env()
    env["LVDM_STEP_TIMES"] = str(run / "times.json")
    if not policy:
        env["LVDM_THREADS"] = "off"
    cmd = [sys.executable, "-m", "lvdm.cli", "fit", "--config", "recipes/tiny/adaln.yaml",
           "--data.init_args.train_shards", str(data / "train-*.tar"), "--data.init_args.val_shards", "null",
           "--data.init_args.batch_size", str(batch_size),
           "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(run),
           "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=thread_policy.StepTimer"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((run / "times.json").read_text())


def seconds_per_step(result: dict, warmup: int) -> float:
    times = result["times"]
    return (times[-1] - times[warmup - 1]) / (len(times) - warmup)


def spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed at the start of each run")
    parser.add_argument("--busy", type=int, default=1, help="CPU-bound processes next to the loaded runs")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="clips per step (the recipe's 16; smaller for a smoke run)")
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        sys.exit(f"--warmup must be in 1..{args.steps - 1}")
    out = Path(args.out or tempfile.mkdtemp(prefix="lvdm_threads_"))
    data = out / "shapes"
    if not (data / "train-000000.tar").exists():
        subprocess.run([sys.executable, "-m", "lvdm.cli", "data", "synth", "--out", str(data),
                        "--num_train", str(4 * args.batch_size), "--num_val", "4"],
                       cwd=ROOT, env=clean_env(), check=True, stdout=subprocess.DEVNULL)
    print(f"# lvdm fit recipes/tiny/adaln.yaml, batch {args.batch_size}, {args.steps} steps "
          f"(first {args.warmup} not timed), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"# command: python benchmarks/thread_policy.py --steps {args.steps} --warmup {args.warmup} "
          f"--busy {args.busy} --batch_size {args.batch_size}")
    print(f"| {'next to':16s} | {'mode':6s} | threads | OMP wait | s/step |")
    print(f"|{'-' * 18}|{'-' * 8}|---------|----------|--------|")
    rows = []
    for busy in (0, args.busy):
        procs = spinners(busy)
        try:
            for mode in ("old", "policy"):
                result = fit(data, out / f"run_{busy}_{mode}", args.steps, mode == "policy", args.batch_size)
                rows.append({"busy": busy, "mode": mode, "threads": result["threads"], "wait": result["wait"],
                             "s_per_step": seconds_per_step(result, args.warmup)})
                label = f"{busy} busy process" + ("es" if busy != 1 else "")
                print(f"| {label:16s} | {mode:6s} | {result['threads']:7d} | {result['wait']:8s} | "
                      f"{rows[-1]['s_per_step']:6.3f} |", flush=True)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    return {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "rows": rows}


if __name__ == "__main__":
    main()
