"""Files written before a module moved keep working: the alias table of :mod:`lvdm.checkpoints.moved`.

``tests/data/before_move/tiny.ckpt`` was written by ``lvdm fit --config
tests/data/before_move/tiny_recipe.yaml`` with the code of commit 685990d, before the layout move:
its stored recipe names ``lvdm.module.LatentDiffusionModule``, its callbacks ran from
``lvdm.callbacks.*``.
"""

import importlib
import warnings
from pathlib import Path

import pytest
import torch

from lvdm.checkpoints.load import load_module, read_checkpoint
from lvdm.checkpoints.moved import MOVED, current_path, update_class_paths
from lvdm.cli import main
from lvdm.shapes.synthetic import write_synthetic_dataset

BEFORE = Path(__file__).parent / "data" / "before_move"


@pytest.mark.parametrize("old,new", [
    ("lvdm.module.LatentDiffusionModule", "lvdm.training.module.LatentDiffusionModule"),
    ("lvdm.callbacks.ema.EMA", "lvdm.training.callbacks.ema.EMA"),
    ("lvdm.callbacks.checkpoint.RunCheckpoint", "lvdm.training.callbacks.run_checkpoint.RunCheckpoint"),
    ("lvdm.callbacks.checkpoint.AtomicCheckpointIO", "lvdm.checkpoints.atomic.AtomicCheckpointIO"),
    ("lvdm.perf.compile.CompileBlocks", "lvdm.training.callbacks.parallel.CompileBlocks"),
    ("lvdm.data.latents:encode_shards", "lvdm.curation.encode:encode_shards"),
    ("lvdm.distributed.SequenceParallel", "lvdm.training.callbacks.parallel.SequenceParallel"),
    ("lvdm.models.dit.DiT", "lvdm.models.dit.DiT"),  # never moved
    ("lvdm.modules.X", "lvdm.modules.X"),  # a prefix of a moved name is not that name
])
def test_current_path(old, new):
    assert current_path(old) == new


def test_every_alias_names_what_exists_now_and_no_old_module_is_left():
    for old, new in MOVED.items():
        module, _, name = new.rpartition(".")
        try:
            importlib.import_module(new)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), name), f"{old} → {new}: no such object"
        if old.rpartition(".")[2][:1].islower():  # a module path: it has one home now, the new one
            with pytest.raises(ModuleNotFoundError):
                importlib.import_module(old)


def test_update_class_paths_reaches_nested_specs_and_lists():
    recipe = {"model": {"class_path": "lvdm.module.LatentDiffusionModule",
                        "init_args": {"denoiser": {"class_path": "lvdm.models.dit.DiT"}}},
              "trainer": {"callbacks": [{"class_path": "lvdm.callbacks.guard.NonFiniteGuard"}]}}
    new, changed = update_class_paths(recipe)
    assert new["trainer"]["callbacks"][0]["class_path"] == "lvdm.training.callbacks.nonfinite.NonFiniteGuard"
    assert changed == [("lvdm.module.LatentDiffusionModule", "lvdm.training.module.LatentDiffusionModule"),
                       ("lvdm.callbacks.guard.NonFiniteGuard", "lvdm.training.callbacks.nonfinite.NonFiniteGuard")]
    assert recipe["model"]["class_path"] == "lvdm.module.LatentDiffusionModule"  # the input is left alone


def test_checkpoint_saved_before_the_move_loads_and_samples():
    ckpt = read_checkpoint(BEFORE / "tiny.ckpt")
    assert ckpt["hyper_parameters"]["_class_path"] == "lvdm.module.LatentDiffusionModule"  # really the old path
    loaded = load_module(BEFORE / "tiny.ckpt", weights="raw")
    assert type(loaded.module).__module__ == "lvdm.training.module"
    for name, value in loaded.module.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][name], rtol=0, atol=0)
    video = loaded.module.generate(["a red circle moving left"], num_steps=2, seed=0)
    assert video.shape[:2] == (1, 3) and torch.isfinite(video).all()


def test_recipe_and_checkpoint_from_before_the_move_resume_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset("data", num_train=8, num_val=2, num_frames=2, size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", str(BEFORE / "tiny_recipe.yaml"), "--trainer.default_root_dir", "run",
              "--trainer.max_steps", "3", "--ckpt_path", str(BEFORE / "tiny.ckpt")])
    said = " ".join(str(w.message) for w in caught)
    assert "'lvdm.callbacks.ema.EMA', which now lives at 'lvdm.training.callbacks.ema.EMA'" in said
    resumed = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 3  # two steps from the old checkpoint, one more here
    assert resumed["hyper_parameters"]["_class_path"] == "lvdm.training.module.LatentDiffusionModule"
    assert "EMA" in resumed["callbacks"]
