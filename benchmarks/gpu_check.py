"""The GPU check behind ``benchmarks/gpu_check.sh`` (read its header for the wheels and the use).

Runs each step in its own process group with its own timeout, keeps going when one fails, never
runs past a global budget (8 minutes), and rewrites one JSON after every step, so that a check cut
short still leaves what it measured. Standard library only: it runs before anything is installed.

``--dry-run`` (CPU, under a minute): the same steps at CPU/tiny sizes; the steps that need a GPU
(flash attention, ``torch.compile``) are not run, their flags are checked against the script's
``--help``; the test steps only collect their tests. Nothing is written outside ``--out``'s
folder and the work folder (a temporary one unless ``--work`` names it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0  # the whole check, 8 minutes
RESERVE_S = 5.0  # kept back at the end to write the JSON
MIN_STEP_S = 10.0  # a step with less time than this left is skipped, not started
TAIL_CHARS = 2000
BENCH = "benchmarks/bench_dit.py"
TARGETS = {"samples_per_s_min": 20.0, "mfu_min": 0.5, "sampling_s_max": 2.0, "latte_step_speedup_min": 1.5}
SUMMARY_FIELDS = (
    "device", "torch", "train_samples_per_s", "mfu", "sampling_s_50_steps_cfg", "peak_mem_gb",
    "latte_samples_per_s", "lvdm_vs_latte_step_speedup", "lvdm_vs_latte_sampling_speedup",
    "flash_samples_per_s", "flash_vs_sdpa_step_speedup", "compile_samples_per_s", "compile_vs_eager_step_speedup",
    "fit_bf16_steps", "fit_bf16_last_loss", "tests_sp_passed", "tests_sp_failed", "tests_deepspeed_passed",
    "tests_deepspeed_failed", "targets_met",
)
ENV_PROBE = """
import importlib.metadata as md, importlib.util, json, torch
MODULES = {m: m for m in ("lvdm", "diffusers", "webdataset", "av", "jsonargparse", "omegaconf", "deepspeed")}
MODULES.update(flash_attn="flash-attn", flash_attn_interface="flash-attn-3")  # module: distribution
def version(module, dist):  # the installed version, "importable" (e.g. lvdm from src/), or None
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "importable" if importlib.util.find_spec(module) else None
cuda = torch.cuda.is_available()
print("ENV " + json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled() if cuda else None,
    "packages": {m: version(m, d) for m, d in MODULES.items()}}))
"""


@dataclass
class Step:
    """One command of the check: ``argv`` on the GPU, ``dry_argv`` in a dry run (None: the flags
    of ``argv`` are only checked against the script's ``--help``)."""

    name: str
    argv: list[str]
    timeout_s: float
    dry_argv: list[str] | None = None
    metrics: str = "none"  # how the numbers are read back: see read_metrics
    extra: dict = field(default_factory=dict)


def _bench(work: Path, tag: str, *flags: str, dry: bool = False) -> list[str]:
    preset = ["--preset", "cpu-smoke"] if dry else ["--preset", "h100"]
    return [sys.executable, BENCH, *preset, "--dtype", "bf16", *flags, "--json", str(work / f"{tag}.json")]


def _fit(work: Path, dry: bool) -> list[str]:
    data, run = work / ("shapes_dry" if dry else "shapes"), work / ("fit_dry" if dry else "fit")
    size = ["--data.init_args.batch_size", "2", "--trainer.max_steps", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1"] if dry else [
        "--trainer.max_steps", "60", "--trainer.val_check_interval", "30", "--trainer.limit_val_batches", "1"]
    return [sys.executable, "-m", "lvdm.cli", "fit", "--config", "recipes/tiny/stdit.yaml",
            "--trainer.precision", "bf16-mixed", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(run),
            "--trainer.default_root_dir", str(run), "--data.init_args.samples_per_epoch", "64",
            "--data.init_args.train_shards", str(data / "train-*.tar"),
            "--data.init_args.val_shards", str(data / "val-*.tar"), *size]


def _synth(work: Path, dry: bool) -> list[str]:
    data = work / ("shapes_dry" if dry else "shapes")
    n = ["--num_train", "8", "--num_val", "2", "--shard_size", "4"] if dry else ["--num_train", "128", "--num_val", "16"]
    return [sys.executable, "-m", "lvdm.cli", "data", "synth", "--out", str(data), *n]


def _pytest(work: Path, tag: str, files: list[str], dry: bool) -> list[str]:
    mode = ["--collect-only"] if dry else ["-rfE"]
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *mode,
            f"--junitxml={work / f'{tag}.xml'}", *files]


SP_TESTS = ["tests/distributed/test_sequence_parallel.py", "tests/perf/test_speed_paths.py"]
DEEPSPEED_TESTS = ["tests/distributed/test_zero.py"]


def plan(work: Path, wheels: Path) -> list[Step]:
    """The steps in the order they run: the ones the issue needs most come first, so that a
    budget cut leaves the least important ones out."""
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--target", str(work / "site"), *map(str, sorted(wheels.glob("*.whl")))]
    return [
        Step("install", install, 90, dry_argv=[sys.executable, "-m", "pip", "--version"], metrics="install",
             extra={"wheels": wheels}),
        Step("env", [sys.executable, "-c", ENV_PROBE], 60, dry_argv=[sys.executable, "-c", ENV_PROBE], metrics="env"),
        Step("bench_h100", _bench(work, "bench_h100", "--models", "lvdm", "latte"), 180,
             dry_argv=_bench(work, "bench_h100", "--models", "lvdm", dry=True), metrics="bench"),
        Step("bench_flash", _bench(work, "bench_flash", "--models", "lvdm", "--attention", "flash"), 90,
             metrics="bench", extra={"needs": "flash"}),
        Step("synth", _synth(work, False), 60, dry_argv=_synth(work, True)),
        Step("fit_bf16", _fit(work, False), 120, dry_argv=_fit(work, True), metrics="fit",
             extra={"run": work / "fit", "dry_run_dir": work / "fit_dry"}),
        Step("tests_sp", _pytest(work, "tests_sp", SP_TESTS, False), 120,
             dry_argv=_pytest(work, "tests_sp", SP_TESTS, True), metrics="pytest"),
        Step("tests_deepspeed", _pytest(work, "tests_deepspeed", DEEPSPEED_TESTS, False), 180,
             dry_argv=_pytest(work, "tests_deepspeed", DEEPSPEED_TESTS, True), metrics="pytest"),
        Step("bench_compile", _bench(work, "bench_compile", "--models", "lvdm", "--compile"), 180, metrics="bench"),
    ]


def child_env(work: Path) -> dict:
    """The steps' environment: the carried wheels (installed under the work folder) and this
    checkout's ``src`` first on the path, so nothing is installed into the repository or the system."""
    path = [str(work / "site"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1"}  # nothing is downloaded: the machine has no network


def execute(argv: list[str], timeout_s: float, env: dict) -> tuple[str, int | None, str]:
    """Run ``argv`` in the repository in a process group of its own; on timeout the whole group
    (a test's worker processes too) is killed. Returns (status, returncode, output)."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", None, out
    return ("ok" if proc.returncode == 0 else "failed"), proc.returncode, out


_HELP: dict[str, str] = {}


def unknown_flags(argv: list[str], env: dict) -> list[str]:
    """The ``--flags`` of a script command that its ``--help`` does not list (a dry run's check of
    the steps it does not run)."""
    script = argv[1]
    if script not in _HELP:
        _HELP[script] = execute([argv[0], script, "--help"], 60, env)[2]
    return [a for a in argv[2:] if a.startswith("--") and not re.search(re.escape(a) + r"(?![\w-])", _HELP[script])]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fit_metrics(run: Path) -> dict:
    """The last logged training step and loss (CSVLogger) and whether the run checkpoint exists."""
    step, loss = None, None
    for table in sorted(run.glob("lightning_logs/version_*/metrics.csv")):
        with table.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    step, loss = int(row["step"]), float(row["train/loss"])
    return {"last_step": step, "last_loss": loss, "checkpoint": (run / "checkpoints" / "last.ckpt").exists()}


def _pytest_metrics(xml: Path, out: str, dry: bool) -> dict:
    """Counts from the junit XML (a run) or the ``N tests collected`` line (a dry run)."""
    collected = re.search(r"(\d+) tests? collected", out)
    counts = {"tests": None, "passed": None, "failed": None, "skipped": None,
              "collected": int(collected.group(1)) if collected else None}
    if xml.is_file() and not dry:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts.update(tests=n["tests"], failed=n["failures"] + n["errors"], skipped=n["skipped"],
                      passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"])
    return counts


def _env_metrics(out: str) -> dict:
    line = next((ln for ln in out.splitlines() if ln.startswith("ENV ")), None)
    return json.loads(line[4:]) if line else {}


def read_metrics(step: Step, argv: list[str], out: str, dry: bool) -> dict:
    """The numbers a step produced, read from the files it wrote (or its output)."""
    kind = step.metrics
    if kind == "bench":
        result = _read_json(Path(argv[argv.index("--json") + 1]))
        return {"rows": result.get("rows"), "ratios": result.get("ratios"), "device": result.get("device"),
                "config": result.get("config")}
    if kind == "fit":
        return _fit_metrics(step.extra["dry_run_dir"] if dry else step.extra["run"])
    if kind == "pytest":
        junit = next(a for a in argv if a.startswith("--junitxml="))
        return _pytest_metrics(Path(junit.split("=", 1)[1]), out, dry)
    if kind == "env":
        return _env_metrics(out)
    if kind == "install":  # in a dry run: what would be installed
        return {"wheels": [Path(a).name for a in step.argv if a.endswith(".whl")]}
    return {}


def _record(step: Step, status: str, note: str | None = None) -> dict:
    return {"status": status, "seconds": 0.0, "timeout_s": step.timeout_s, "command": step.argv, "ran": None,
            "returncode": None, "output_tail": "", "metrics": {}, "note": note}


def _gate(step: Step, dry: bool, env: dict, results: dict, left_s: float) -> dict | None:
    """The record of a step that is not run (no wheels, no flash-attn, no budget, or a dry run of
    a GPU-only step), else None."""
    if left_s < MIN_STEP_S:
        return _record(step, "skipped", f"budget: {max(left_s, 0):.0f} s left, {MIN_STEP_S:.0f} s needed")
    if step.name == "install" and not dry and not any(a.endswith(".whl") for a in step.argv):
        return _record(step, "skipped", f"no wheels in {step.extra['wheels']}: nothing installed")
    if dry and step.dry_argv is None:
        unknown = unknown_flags(step.argv, env)
        return _record(step, "failed" if unknown else "dry-run",
                       f"{step.argv[1]} has no flag {', '.join(unknown)}" if unknown else "GPU only: flags checked")
    if step.extra.get("needs") == "flash":
        packages = results.get("env", {}).get("metrics", {}).get("packages", {})
        if not (packages.get("flash_attn") or packages.get("flash_attn_interface")):
            return _record(step, "skipped", "flash-attn is not installed: add its wheel to the wheels folder")
    return None


def run_step(step: Step, dry: bool, env: dict, results: dict, deadline: float) -> dict:
    left_s = deadline - time.monotonic() - RESERVE_S
    gated = _gate(step, dry, env, results, left_s)
    if gated is not None:
        return gated
    argv = step.dry_argv if dry else step.argv
    timeout_s = min(step.timeout_s, left_s)
    shown = " ".join("<probe>" if "\n" in a else a for a in argv)
    print(f"[gpu_check] {step.name}: {shown} (timeout {timeout_s:.0f} s)", flush=True)
    start = time.monotonic()
    status, code, out = execute(argv, timeout_s, env)
    record = _record(step, status)
    record.update(seconds=round(time.monotonic() - start, 2), timeout_s=round(timeout_s, 1), ran=argv,
                  returncode=code, output_tail=out[-TAIL_CHARS:], metrics=read_metrics(step, argv, out, dry))
    if step.metrics == "pytest" and code == 5:  # pytest: no tests collected (a module skipped itself)
        record.update(status="skipped", note="no tests ran: a test module skipped itself (a missing package?)")
    print(f"[gpu_check] {step.name}: {record['status']} in {record['seconds']} s", flush=True)
    return record


def _row(results: dict, step: str, model: str = "lvdm") -> dict:
    return ((results.get(step, {}).get("metrics") or {}).get("rows") or {}).get(model) or {}


def _ratio(a, b):
    return a / b if a and b else None


def summary(results: dict, dry: bool) -> dict:
    """The headline numbers, every field present (None where the step did not measure it; the
    targets, which are the h100 preset's, are None in a dry run)."""
    main, flash, comp = _row(results, "bench_h100"), _row(results, "bench_flash"), _row(results, "bench_compile")
    ratios = (results.get("bench_h100", {}).get("metrics") or {}).get("ratios") or {}
    env = results.get("env", {}).get("metrics") or {}
    fit = results.get("fit_bf16", {}).get("metrics") or {}
    sp, ds = (results.get(k, {}).get("metrics") or {} for k in ("tests_sp", "tests_deepspeed"))
    out = {
        "device": env.get("device"), "torch": env.get("torch"),
        "train_samples_per_s": main.get("samples_per_s"), "mfu": main.get("mfu"),
        "sampling_s_50_steps_cfg": main.get("sampling_s"), "peak_mem_gb": main.get("peak_mem_gb"),
        "latte_samples_per_s": _row(results, "bench_h100", "latte").get("samples_per_s"),
        "lvdm_vs_latte_step_speedup": ratios.get("training_speedup"),
        "lvdm_vs_latte_sampling_speedup": ratios.get("sampling_speedup"),
        "flash_samples_per_s": flash.get("samples_per_s"),
        "flash_vs_sdpa_step_speedup": _ratio(main.get("train_ms_per_step"), flash.get("train_ms_per_step")),
        "compile_samples_per_s": comp.get("samples_per_s"),
        "compile_vs_eager_step_speedup": _ratio(main.get("train_ms_per_step"), comp.get("train_ms_per_step")),
        "fit_bf16_steps": fit.get("last_step"), "fit_bf16_last_loss": fit.get("last_loss"),
        "tests_sp_passed": sp.get("passed"), "tests_sp_failed": sp.get("failed"),
        "tests_deepspeed_passed": ds.get("passed"), "tests_deepspeed_failed": ds.get("failed"),
    }
    measured = [("samples_per_s_min", out["train_samples_per_s"], lambda v, t: v >= t),
                ("mfu_min", out["mfu"], lambda v, t: v >= t),
                ("sampling_s_max", out["sampling_s_50_steps_cfg"], lambda v, t: v <= t),
                ("latte_step_speedup_min", out["lvdm_vs_latte_step_speedup"], lambda v, t: v >= t)]
    out["targets_met"] = {k: (None if v is None or dry else ok(v, TARGETS[k])) for k, v, ok in measured}
    assert tuple(out) == SUMMARY_FIELDS
    return out


def write(path: Path, report: dict) -> None:
    """Atomically: a check killed while writing leaves the previous JSON, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def check(out: Path, work: Path, wheels: Path, dry: bool, budget_s: float) -> dict:
    start, deadline = time.monotonic(), time.monotonic() + budget_s
    env = child_env(work)
    report = {"schema": "lvdm-gpu-check/1", "dry_run": dry, "started_utc": datetime.now(timezone.utc).isoformat(),
              "finished_utc": None, "budget_s": budget_s, "total_s": None, "python": sys.version.split()[0],
              "work_dir": str(work), "wheels_dir": str(wheels), "targets": TARGETS, "steps": {}, "summary": {}}
    steps = plan(work, wheels)
    for step in steps:  # every step has its record from the start: a cut-short JSON still names them all
        report["steps"][step.name] = _record(step, "pending")
    report["summary"] = summary(report["steps"], dry)
    write(out, report)
    for step in steps:
        report["steps"][step.name] = run_step(step, dry, env, report["steps"], deadline)
        report["summary"] = summary(report["steps"], dry)
        report["total_s"] = round(time.monotonic() - start, 2)
        write(out, report)
    report["finished_utc"] = datetime.now(timezone.utc).isoformat()
    write(out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU/tiny sizes, GPU-only steps checked not run")
    parser.add_argument("--out", help="the JSON to write (default: $OUT/gpu_check.json)")
    parser.add_argument("--work", help="folder for data, runs and installed wheels (default: a new temporary one)")
    parser.add_argument("--wheels", default=str(ROOT / "wheels"), help="the carried wheels (default: <repo>/wheels)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check (default 480)")
    args = parser.parse_args(argv)
    if not args.out and not os.environ.get("OUT"):
        parser.error("--out PATH is needed (or $OUT, where the JSON is written as gpu_check.json)")
    out = Path(args.out or Path(os.environ["OUT"], "gpu_check.json")).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="lvdm_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    report = check(out, work, Path(args.wheels).resolve(), args.dry_run, args.budget)
    bad = [name for name, r in report["steps"].items() if r["status"] in ("failed", "timeout")]
    print(f"[gpu_check] wrote {out} in {report['total_s']} s; " + (f"failed: {', '.join(bad)}" if bad else "no failures"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
