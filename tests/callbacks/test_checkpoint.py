"""RunCheckpoint: one folder per run, atomic writes, `last` = the newest valid checkpoint."""

import os
import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lvdm.checkpoints.atomic import AtomicCheckpointIO, checkpoint_problem, newest_valid_checkpoint
from lvdm.training.callbacks.run_checkpoint import RunCheckpoint


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(root, max_steps, ckpt_path=None, logger=True):
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", default_root_dir=root, logger=logger,
                        callbacks=[RunCheckpoint(every_n_train_steps=1, save_top_k=-1, filename="{step}")],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4), ckpt_path=ckpt_path)
    return trainer


def test_second_run_resumes_from_the_same_folder_despite_a_new_logger_version(tmp_path):
    first = fit(tmp_path, 3)
    assert first.logger.version == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]
    second = fit(tmp_path, 5, ckpt_path="last")
    assert second.logger.version == 1  # a new log folder: Lightning's ModelCheckpoint would look in version_1/
    assert second.ckpt_path == os.path.normpath(tmp_path / "checkpoints" / "last.ckpt")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


class Validated(Tiny):
    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.net(batch[0]).pow(2).mean())


class LastSeen(L.Callback):
    """The global step stored in last.ckpt at the start of every training batch."""

    def __init__(self, path):
        self.path, self.steps = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        exists = self.path.exists()
        self.steps.append(torch.load(self.path, weights_only=True)["global_step"] if exists else None)


def test_last_is_written_at_every_validation_without_top_k(tmp_path):
    """`save_top_k: 0` + `save_last` (the small recipes): Lightning alone writes last.ckpt only at
    the end of training, so a run killed before then lost everything; and once it has written one,
    it does not write the final step at the end."""
    seen = LastSeen(tmp_path / "checkpoints" / "last.ckpt")
    loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)
    trainer = L.Trainer(max_steps=7, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        callbacks=[RunCheckpoint(save_top_k=0), seen], val_check_interval=3,
                        check_val_every_n_epoch=None, limit_val_batches=1, num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Validated(), loader, loader)
    assert seen.steps == [None, None, None, 3, 3, 3, 6]
    # and the end of training writes the final step, though the last validation came before it
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 7
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_valid_one(tmp_path):
    fit(tmp_path, 3, logger=False)
    folder = tmp_path / "checkpoints"
    truncate(folder / "step=3.ckpt")
    truncate(folder / "last.ckpt")
    for age, name in enumerate(["last.ckpt", "step=3.ckpt", "step=2.ckpt", "step=1.ckpt"]):
        os.utime(folder / name, (time.time() - age,) * 2)
    assert "not a complete checkpoint archive" in checkpoint_problem(folder / "last.ckpt")
    with pytest.warns(UserWarning, match="passing over newer checkpoints.*last.ckpt.*step=3.ckpt"):
        assert newest_valid_checkpoint(folder) == folder / "step=2.ckpt"
    with pytest.warns(UserWarning, match="resuming from .*step=2.ckpt"):
        trainer = fit(tmp_path, 4, ckpt_path="last", logger=False)
    assert trainer.ckpt_path.endswith("step=2.ckpt") and trainer.global_step == 4


def test_only_corrupt_checkpoints_fail_clearly_and_none_start_fresh(tmp_path):
    assert newest_valid_checkpoint(tmp_path / "checkpoints") is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(RuntimeError, match="no valid checkpoint in .*last.ckpt"):
        fit(tmp_path, 2, ckpt_path="last", logger=False)


def test_atomic_save_writes_next_to_the_destination(tmp_path, monkeypatch):
    """A failure in the middle of a write leaves the previous checkpoint whole, whatever TMPDIR is."""
    monkeypatch.setenv("TMPDIR", "/dev/shm")
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_lvdm_fit_twice_with_ckpt_path_last_resumes(tmp_path):
    """The CLI gives every run a RunCheckpoint: the second `lvdm fit --ckpt_path last` continues."""
    from pathlib import Path

    from lvdm.cli import lightning_cli
    from lvdm.shapes.synthetic import write_synthetic_dataset

    data = tmp_path / "shapes"
    write_synthetic_dataset(str(data), num_train=16, num_val=4, shard_size=16)
    recipe = str(Path(__file__).resolve().parents[2] / "recipes/tiny/adaln.yaml")
    args = ["--config", recipe, "--data.init_args.train_shards", str(data / "train-*.tar"),
            "--data.init_args.val_shards", str(data / "val-*.tar"), "--data.init_args.batch_size", "2",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--model.init_args.denoiser.init_args.depth", "1", "--trainer.default_root_dir", str(tmp_path / "run")]
    first = lightning_cli(["fit", *args, "--trainer.max_steps", "2"])
    assert isinstance(first.trainer.checkpoint_callback, RunCheckpoint)
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()
    second = lightning_cli(["fit", *args, "--trainer.max_steps", "3", "--ckpt_path", "last"])
    assert second.trainer.ckpt_path == str(tmp_path / "run/checkpoints/last.ckpt")
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    # one log folder for the whole run (each resume used to open a new version_N)
    assert [p.name for p in (tmp_path / "run/lightning_logs").iterdir()] == ["version_0"]
    assert (tmp_path / "run/lightning_logs/version_0/config.yaml").is_file()


def test_resume_at_max_steps_leaves_last_at_the_newest_step(tmp_path):
    """Issue 24: a kill between Lightning's two writes of step 20 (``step=20.ckpt``, then
    ``last.ckpt``) left last.ckpt at step 19; the next run resumed from step=20.ckpt, had no step
    left to train (Lightning then calls no hook) and ended with last.ckpt still at 19."""
    fit(tmp_path, 20, logger=False)
    folder = tmp_path / "checkpoints"
    (folder / "last.ckpt").write_bytes((folder / "step=19.ckpt").read_bytes())
    older = (folder / "step=20.ckpt").stat().st_mtime - 1
    os.utime(folder / "last.ckpt", (older, older))
    trainer = fit(tmp_path, 20, ckpt_path="last", logger=False)
    assert trainer.ckpt_path == os.path.normpath(folder / "step=20.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 20
    assert not list(folder.glob(".*.tmp-*"))


def test_resumed_runs_log_into_one_version_folder(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lvdm.checkpoints.atomic import reuse_log_versions

    for version in ("version_0", "version_3", "version_x"):
        (tmp_path / "lightning_logs" / version).mkdir(parents=True)
    loggers = [TensorBoardLogger(tmp_path), CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path, version=7)]
    trainer = L.Trainer(default_root_dir=tmp_path, logger=loggers)
    assert reuse_log_versions(trainer)
    assert [logger.version for logger in loggers] == [3, 0, 7]  # newest kept, a fresh csv folder, a set version
    assert not reuse_log_versions(L.Trainer(default_root_dir=tmp_path / "new", logger=TensorBoardLogger(tmp_path / "new")))
