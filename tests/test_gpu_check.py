"""benchmarks/gpu_check.sh: its --dry-run on the CPU runs every step at tiny sizes and writes the
one JSON with every field, outside the repository; a step past its timeout is killed with its
children; the global budget skips the steps it has no time for."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RECORD_FIELDS = {"status", "seconds", "timeout_s", "command", "ran", "returncode", "output_tail", "metrics", "note"}
TOP_FIELDS = {"schema", "dry_run", "started_utc", "finished_utc", "budget_s", "total_s", "python", "work_dir",
              "wheels_dir", "targets", "steps", "summary"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
tree_state = _load("suite_conftest", ROOT / "tests" / "conftest.py").tree_state


def _run(tmp_path: Path, *args: str, via_out_env: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
    """The script with relative paths (the caller's, here tmp_path, never the repository's); the
    JSON named by --out, or by $OUT (the device machine's folder that comes back)."""
    out = tmp_path / "out" / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "OUT": str(out.parent)}
    where = [] if via_out_env else ["--out", "out/gpu_check.json"]
    if not via_out_env:
        env.pop("OUT")
    proc = subprocess.run(["bash", str(SCRIPT), *where, "--work", "work", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def _assert_every_field(report: dict) -> None:
    assert set(report) == TOP_FIELDS
    assert list(report["steps"]) == [s.name for s in gpu_check.plan(Path("w"), Path("wheels"))]
    for name, record in report["steps"].items():
        assert set(record) == RECORD_FIELDS, name
    assert tuple(report["summary"]) == gpu_check.SUMMARY_FIELDS
    assert set(report["summary"]["targets_met"]) == set(gpu_check.TARGETS)


def test_dry_run_writes_every_field_and_nothing_into_the_repository(tmp_path):
    before = tree_state(ROOT)
    proc, report = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _assert_every_field(report)
    assert report["dry_run"] is True and report["finished_utc"] and report["total_s"] > 0
    steps = report["steps"]
    allowed = {"ok", "dry-run"} | ({"skipped"} if importlib.util.find_spec("deepspeed") is None else set())
    assert {name: r["status"] for name, r in steps.items() if r["status"] not in allowed} == {}
    # the GPU-only steps are checked, not run; the others ran their tiny commands and were read back
    assert steps["bench_compile"]["status"] == "dry-run" and "--compile" in steps["bench_compile"]["command"]
    assert steps["bench_h100"]["ran"][steps["bench_h100"]["ran"].index("--preset") + 1] == "cpu-smoke"
    assert "h100" in steps["bench_h100"]["command"]
    assert report["summary"]["train_samples_per_s"] > 0 and report["summary"]["sampling_s_50_steps_cfg"] > 0
    assert steps["fit_bf16"]["metrics"]["checkpoint"] and steps["fit_bf16"]["metrics"]["last_step"] is not None
    assert steps["tests_sp"]["metrics"]["collected"] > 0
    assert set(report["summary"]["targets_met"].values()) == {None}  # the targets are the h100 preset's
    assert str(tmp_path / "work") in steps["fit_bf16"]["ran"][steps["fit_bf16"]["ran"].index("--trainer.default_root_dir") + 1]
    assert tree_state(ROOT) == before


def test_no_budget_left_skips_every_step_and_still_writes_every_field(tmp_path):
    proc, report = _run(tmp_path, "--budget", "0", via_out_env=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_every_field(report)
    assert {r["status"] for r in report["steps"].values()} == {"skipped"}
    assert all(r["note"].startswith("budget") for r in report["steps"].values())


def _alive(pid: int) -> bool:
    """Running (a zombie, killed and not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_step_past_its_timeout_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    command = ["bash", "-c", f"sleep 60 >/dev/null 2>&1 & echo $! > {pid_file}; wait"]
    status, code, _ = gpu_check.execute(command, 2, dict(os.environ))
    assert (status, code) == ("timeout", None)
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is sent; the process table may take a moment to drop it
        if not _alive(child):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} outlived the timeout")


def test_a_gpu_only_flag_the_script_does_not_have_fails_the_dry_run_check(tmp_path):
    env = gpu_check.child_env(tmp_path)
    argv = [sys.executable, gpu_check.BENCH, "--preset", "h100", "--compile", "--no_such_flag"]
    assert gpu_check.unknown_flags(argv, env) == ["--no_such_flag"]
