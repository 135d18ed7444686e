"""The recipe side of lvdm.distributed: the callbacks, their fragments, and `lvdm fit` with
sequence parallelism on two CPU processes."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lvdm.cli import lightning_cli
from lvdm.distributed.ranks import data_parallel_rank_world, seed_data_parallel_replica
from lvdm.training.callbacks.parallel import ActivationCheckpointing, SequenceParallel
from lvdm.checkpoints.load import read_checkpoint
from lvdm.models.dit import DiT

ROOT = Path(__file__).resolve().parents[2]
FRAGMENTS = [ROOT / "callbacks/sequence_parallel.yaml", ROOT / "callbacks/activation_checkpointing.yaml"]


def _trainer(world_size=4, global_rank=3, callbacks=()):
    return SimpleNamespace(world_size=world_size, global_rank=global_rank, callbacks=list(callbacks))


def test_data_parallel_rank_world():
    assert data_parallel_rank_world(None) == (0, 1)
    assert data_parallel_rank_world(_trainer()) == (3, 4)
    assert data_parallel_rank_world(_trainer(callbacks=[SequenceParallel(size=2)])) == (1, 2)
    assert data_parallel_rank_world(_trainer(callbacks=[SequenceParallel(size=4)])) == (0, 1)


def test_each_data_parallel_replica_draws_its_own_noise(monkeypatch):
    """Lightning seeds every rank alike; lvdm reseeds with seed + data-parallel rank, so DDP
    replicas draw different noise while the ranks of a sequence-parallel group draw the same."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")

    def draw(trainer):
        assert seed_data_parallel_replica(trainer) == 7
        return torch.randn(4)

    plain = [draw(_trainer(world_size=2, global_rank=r)) for r in (0, 1)]
    assert not torch.equal(plain[0], plain[1])
    grouped = [draw(_trainer(world_size=2, global_rank=r, callbacks=[SequenceParallel(size=2)])) for r in (0, 1)]
    assert torch.equal(grouped[0], grouped[1]) and torch.equal(grouped[0], plain[0])
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert seed_data_parallel_replica(_trainer()) is None  # no seed_everything: nothing to spread


def _module(**kwargs):
    return torch.nn.ModuleDict({"denoiser": DiT(in_channels=2, hidden_size=24, depth=1, **kwargs)})


@pytest.mark.parametrize("callback,module,world,expect", [
    (SequenceParallel(size=2), _module(num_heads=2), 3, "world size divisible by 2"),
    (SequenceParallel(size=2), _module(num_heads=3), 2, "use mode='ring'"),
    (SequenceParallel(size=2), _module(num_heads=2, conditioning="in_context"), 2, "in_context"),
    (SequenceParallel(size=2), torch.nn.Linear(2, 2), 2, "sequence_parallel_plan"),
])
def test_sequence_parallel_setup_errors_before_any_communication(callback, module, world, expect):
    with pytest.raises(ValueError, match=expect.replace("(", r"\(")):
        callback.setup(_trainer(world_size=world, global_rank=0, callbacks=[callback]), module, "fit")


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        SequenceParallel(size=2, mode="striped")
    with pytest.raises(ValueError, match="size"):
        SequenceParallel(size=0)
    with pytest.raises(ValueError, match="fraction"):
        ActivationCheckpointing(fraction=-0.1)


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_fragments_compose_with_a_recipe(fragment):
    cli = lightning_cli(["--config", str(ROOT / "recipes/tiny/stdit.yaml"), "--config", str(fragment)], run=False)
    wanted = yaml.safe_load(fragment.read_text())["trainer"]["callbacks+"][0]["class_path"].rsplit(".", 1)[1]
    assert wanted in {type(c).__name__ for c in cli.trainer.callbacks}


def lvdm(*args):
    env = dict(os.environ, DS_ACCELERATOR="cpu")  # DeepSpeed on CPU (ignored by the other strategies)
    proc = subprocess.run([sys.executable, "-m", "lvdm.cli", *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise AssertionError(f"lvdm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


# ZeRO-2 through the CPU stand-in of Lightning's DeepSpeedStrategy (see lvdm.distributed.cpu_deepspeed),
# in float32: DeepSpeed's bf16 on CPU is covered by tests/distributed/test_zero.py's notes
ZERO2_ON_CPU = ["--config", "strategies/zero2.yaml",
                "--trainer.strategy.class_path", "lvdm.distributed.cpu_deepspeed.CPUDeepSpeedStrategy",
                "--trainer.strategy.init_args.precision_plugin.init_args.precision", "32-true"]


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_fit_with_ulysses_and_checkpointing_on_two_cpu_processes(strategy, tmp_path):
    """DDP or DeepSpeed ZeRO-2 over 2 gloo ranks that form one sequence-parallel group of 2: the
    ranks must read the same batches (the callback checks it on the first batch), train and
    validate in step."""
    if strategy == "zero2":
        pytest.importorskip("deepspeed")
    data = tmp_path / "shapes"
    lvdm("data", "synth", "--out", str(data), "--num_train", "20", "--num_val", "4", "--shard_size", "10")
    run = tmp_path / "run"
    strategy_args = ["--trainer.strategy", "ddp"] if strategy == "ddp" else ZERO2_ON_CPU
    proc = lvdm("fit", "--config", "recipes/tiny/stdit.yaml", "--config", "callbacks/sequence_parallel.yaml",
                "--config", "callbacks/activation_checkpointing.yaml", "--config", "callbacks/checkpoint.yaml", *strategy_args,
                "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                "--data.init_args.train_shards", str(data / "train-*.tar"),
                "--data.init_args.val_shards", str(data / "val-*.tar"),
                "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "8",
                "--trainer.max_steps", "3", "--trainer.val_check_interval", "2",
                "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(run))
    assert "sequence parallelism: 1 data-parallel replica(s) × 2 ranks (ulysses)" in proc.stdout + proc.stderr
    ckpt = read_checkpoint(next(run.rglob("last.ckpt")))
    assert ckpt["global_step"] == 3
    # parameter names are those of the plain model (checkpointing adds no wrapper)
    assert "denoiser.blocks.0.attns.1.qkv.weight" in ckpt["state_dict"]
