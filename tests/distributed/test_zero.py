"""DeepSpeed ZeRO-2 / ZeRO-3 and FSDP on two CPU processes (gloo), through the `lvdm` CLI.

One run per stage: fit 4 steps → DeepSpeed checkpoint → resume to 6 steps → export to
safetensors (model and EMA weights) → `lvdm sample`. A probe callback (zero_probe.py) records
on every rank the losses, the whole weights after each step and the EMA state, read
independently of the code under test, so the EMA can be recomputed here in float64.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("deepspeed")

from lvdm.cli import main  # noqa: E402
from lvdm.checkpoints.load import read_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DECAY = 0.999  # callbacks/ema.yaml


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lvdm(*args, cwd=ROOT, torchrun=False):
    """`lvdm <args>` in a subprocess; with ``torchrun``, `lvdm fit` through scripts/torchrun.sh (2 processes)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "lvdm.cli", *args]
    if torchrun:
        assert args[0] == "fit"
        env.update(NNODES="1", NPROC_PER_NODE="2", PYTHON=sys.executable, MASTER_PORT=str(free_port()))
        command = ["bash", str(ROOT / "scripts/torchrun.sh"), *args[1:]]
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise AssertionError(f"lvdm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    data = tmp_path_factory.mktemp("shapes")
    main(["data", "synth", "--out", str(data), "--num_train", "40", "--num_val", "8", "--shard_size", "10"])
    return data


def fit_args(data, run, configs, *extra):
    """The recipe, the fragments in ``configs``, then CPU overrides (later arguments win)."""
    return ["fit", "--config", "recipes/tiny/adaln.yaml", "--config", "callbacks/ema.yaml",
            "--config", "callbacks/checkpoint.yaml", *configs,
            "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--data.init_args.train_shards", str(data / "train-*.tar"),
            "--data.init_args.val_shards", str(data / "val-*.tar"),
            "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "40",
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.default_root_dir", str(run), *extra]


def probe_fragment(path, tag):
    path.write_text(yaml.safe_dump({"trainer": {"callbacks+": [
        {"class_path": "zero_probe.ZeroProbe", "init_args": {"out": str(path.parent / "records"), "tag": tag}}]}}))
    return str(path)


def records(tmp_path, tag):
    out = [torch.load(tmp_path / "records" / f"{tag}_rank{r}.pt", weights_only=False) for r in (0, 1)]
    return out


def reference_ema(start, steps, decay):
    """EMA with warm-up, in float64, of the recorded whole weights (one update per step)."""
    shadow = {k: v.double() for k, v in start.items()}
    for n, (_, weights) in enumerate(steps):
        d = min(decay, (1 + n) / (10 + n))
        shadow = {k: d * shadow[k] + (1 - d) * weights[k].double() for k in shadow}
    return shadow


def max_diff(a, b):
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def float32_tol(weights, rtol=1e-6):
    """A float32 EMA of a few steps is within ~1e-6 of its float64 reference, relative to the
    largest weight (at least 1e-6 absolute)."""
    return rtol * max(1.0, max(v.abs().max().item() for v in weights.values()))


# ZeRO-3 (parameters sharded: the harder case for EMA, export and sampling) runs by default;
# ZeRO-2 also trains and resumes in tests/distributed/test_callbacks.py and test_stored_recipe.py,
# so its full cycle here waits for `pytest -m slow` (it costs ~40 s of the 15-minute suite).
@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_zero_fit_resume_export_sample(stage, shapes, tmp_path):
    strategy = ["--config", f"strategies/zero{stage}.yaml"]
    # float32 so that the checks below can be exact (bf16 on CPU trains too, see the README).
    cpu = ["--trainer.strategy.class_path", "lvdm.distributed.cpu_deepspeed.CPUDeepSpeedStrategy",
           "--trainer.strategy.init_args.precision_plugin.init_args.precision", "32-true"]
    run = tmp_path / "run"
    # ZeRO-3's first run starts through scripts/torchrun.sh (torch elastic sets the ranks), the
    # others through Lightning's own launcher.
    lvdm(*fit_args(shapes, run, [*strategy, "--config", probe_fragment(tmp_path / "a.yaml", "a")],
                   *cpu, "--trainer.max_steps", "4"), torchrun=stage == 3)
    last = run / "checkpoints" / "last.ckpt"
    assert (last / "latest").is_file(), "DeepSpeed writes a checkpoint directory"
    a = records(tmp_path, "a")

    # The EMA state is in DeepSpeed's client state, equal to what every rank held at the end.
    saved = read_checkpoint(last)
    assert saved["global_step"] == 4
    assert saved["callbacks"]["EMA"]["num_updates"] == 4
    for rank in a:
        assert rank["ema_at_end"]["num_updates"] == 4
        assert max_diff(rank["ema_at_end"]["shadow"], saved["callbacks"]["EMA"]["shadow"]) == 0.0
    # The EMA under ZeRO equals the float64 EMA of the whole weights after each step.
    ref = reference_ema(a[0]["start_weights"], a[0]["steps"], DECAY)
    assert max_diff(ref, a[0]["ema_at_end"]["shadow"]) < float32_tol(ref)
    # validate_with_ema swaps the averaged weights in for validation and back out after it.
    for rank in a:
        assert len(rank["swap_diff"]) == 2 and max(rank["swap_diff"]) < float32_tol(ref)
        assert max(rank["restore_diff"]) == 0.0
    # The exported (merged float32) weights are the weights at the end of training.
    assert max_diff({k: saved["state_dict"][k] for k in a[0]["steps"][-1][1]}, a[0]["steps"][-1][1]) == 0.0

    lvdm(*fit_args(shapes, run, [*strategy, "--config", probe_fragment(tmp_path / "b.yaml", "b")],
                   *cpu, "--trainer.max_steps", "6", "--ckpt_path", str(last)))
    b = records(tmp_path, "b")
    for rank_a, rank_b in zip(a, b):
        # Resumed: step, weights and EMA are where the first run stopped, on every rank.
        assert rank_b["start_step"] == 4 and rank_b["end_step"] == 6
        assert max_diff(rank_b["start_weights"], rank_a["steps"][-1][1]) == 0.0
        assert rank_b["ema_at_start"]["num_updates"] == 4
        assert max_diff(rank_b["ema_at_start"]["shadow"], rank_a["ema_at_end"]["shadow"]) == 0.0
    # The loss continues from where it was, not from the untrained model's.
    assert sum(b[0]["losses"]) / 2 < 0.9 * a[0]["losses"][0], (a[0]["losses"], b[0]["losses"])
    ref = reference_ema(a[0]["start_weights"], a[0]["steps"] + b[0]["steps"], DECAY)
    assert b[0]["ema_at_end"]["num_updates"] == 6
    assert max_diff(ref, b[0]["ema_at_end"]["shadow"]) < float32_tol(ref)

    # Convert → one safetensors file → `lvdm sample` rebuilds and samples with no other file.
    from safetensors.torch import load_file

    model_file, ema_file = tmp_path / "model.safetensors", tmp_path / "ema.safetensors"
    main(["checkpoint", "export", "--checkpoint", str(last), "--out", str(model_file)])
    main(["checkpoint", "export", "--checkpoint", str(last), "--out", str(ema_file), "--ema", "true"])
    exported, exported_ema = load_file(model_file), load_file(ema_file)
    assert max_diff({k: exported[k] for k in b[0]["steps"][-1][1]}, b[0]["steps"][-1][1]) == 0.0
    assert max_diff({k: exported_ema[k] for k in b[0]["ema_at_end"]["shadow"]}, b[0]["ema_at_end"]["shadow"]) == 0.0
    out = tmp_path / "samples"
    main(["sample", "--checkpoint", str(ema_file), "--prompts", '["a red square moving left"]',
          "--out", str(out), "--steps", "2", "--device", "cpu"])
    assert [v.name for v in out.glob("*.mp4")] == ["00000_a_red_square_moving_left.mp4"]
