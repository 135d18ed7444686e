"""The CPU thread policy: its decisions (a pure function of cores, workers, environment and
load), that `lvdm` applies it before torch starts, and the benchmark's smoke run."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lvdm.utils import ThreadPlan, thread_plan

ROOT = Path(__file__).resolve().parents[1]
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("cores,workers,load,threads", [
    (2, 0, 0.0, 2),    # idle: every core
    (2, 0, 1.0, 1),    # one core busy elsewhere
    (2, 0, 7.6, 1),    # a crowded machine: one thread, never 0
    (16, 4, 0.0, 12),  # DataLoader workers take a core each
    (16, 4, 3.4, 9),
    (1, 3, 0.0, 1),
])
def test_threads_are_the_free_cores(cores, workers, load, threads):
    plan = thread_plan(cores, workers, {}, load)
    assert plan.threads == threads
    assert plan.env == {**PASSIVE, "OMP_NUM_THREADS": str(threads)}
    assert f"{cores} cores" in plan.reason


def test_the_users_environment_wins():
    plan = thread_plan(8, 0, {"OMP_NUM_THREADS": "3"}, 0.0)
    assert plan == ThreadPlan(3, PASSIVE, "OMP_NUM_THREADS=3 set in the environment")
    assert thread_plan(8, 0, {"MKL_NUM_THREADS": "2"}).threads == 2
    assert thread_plan(8, 2, {"OMP_WAIT_POLICY": "active"}, 1.0).env == {"OMP_NUM_THREADS": "5"}
    assert thread_plan(8, 0, {"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "ACTIVE"}).env == {}
    assert thread_plan(2, 0, {"LVDM_THREADS": "off", "OMP_NUM_THREADS": "1"}, 5.0) == ThreadPlan(
        None, {}, "LVDM_THREADS=off: torch's defaults")


@pytest.mark.parametrize("env,fragment", [({"OMP_NUM_THREADS": "0"}, "OMP_NUM_THREADS='0'"),
                                          ({"MKL_NUM_THREADS": "many"}, "MKL_NUM_THREADS='many'")])
def test_bad_thread_settings_are_named(env, fragment):
    with pytest.raises(ValueError, match=fragment):
        thread_plan(2, 0, env)


def test_bad_machine_description_is_refused():
    with pytest.raises(ValueError, match="cores >= 1"):
        thread_plan(0)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    return {**env, "PYTHONPATH": str(ROOT / "src"), **extra}


CHECK = """
import os, sys
from lvdm.cli import main
try:
    main(["estimate", "--help"])
except SystemExit:
    pass
import torch
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())
"""


def test_lvdm_applies_the_policy_before_torch_starts():
    out = subprocess.run([sys.executable, "-c", CHECK], env=clean_env(), capture_output=True, text=True, check=True)
    wait, env_threads, threads = out.stdout.split()[-3:]
    assert wait == "PASSIVE" and int(env_threads) == int(threads) >= 1
    out = subprocess.run([sys.executable, "-c", CHECK], env=clean_env(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["ACTIVE", "1", "1"]


def test_benchmark_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("thread_policy_bench", ROOT / "benchmarks/thread_policy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the smallest run: 2 steps of 2 clips (the table and its fields are the same at any size)
    result = bench.main(["--steps", "2", "--warmup", "1", "--busy", "1", "--batch_size", "2", "--out", str(tmp_path)])
    rows = {(r["busy"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(0, "old"), (0, "policy"), (1, "old"), (1, "policy")}
    assert all(r["s_per_step"] > 0 for r in rows.values())
    assert rows[(0, "old")]["wait"] == "default" and rows[(0, "policy")]["wait"] == "PASSIVE"
    assert "| 1 busy process   | policy |" in capsys.readouterr().out
