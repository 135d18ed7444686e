"""The checkpoint callback every ``lvdm fit`` run gets: one folder per run, atomic writes
(:class:`~lvdm.checkpoints.atomic.AtomicCheckpointIO`) and a ``--ckpt_path last`` that resumes from
the newest valid checkpoint (:func:`~lvdm.checkpoints.atomic.newest_valid_checkpoint`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lvdm.checkpoints.atomic import AtomicCheckpointIO, newest_valid_checkpoint


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with one folder per run, atomic writes and a ``last`` that
    resumes from the newest valid checkpoint.

    Takes every argument of ``ModelCheckpoint`` (``every_n_train_steps``, ``save_top_k``,
    ``filename``, ...); ``dirpath`` defaults to ``<trainer.default_root_dir>/checkpoints`` and
    ``save_last`` to ``True``. ``last`` is written at the end of every validation even when no
    top-k checkpoint is (``save_top_k: 0``, the small recipes), where Lightning writes it only
    together with one: a killed run resumes from its last validation, not from scratch. At the
    end of training ``last`` always holds the final step.
    """

    def __init__(self, dirpath: Optional[str] = None, save_last: Optional[bool] = True, **kwargs: Any):
        super().__init__(dirpath=dirpath, save_last=save_last, **kwargs)

    def run_folder(self, trainer: L.Trainer) -> str:
        return str(self.dirpath) if self.dirpath is not None else os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dirpath = self.run_folder(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and os.path.isdir(self.dirpath):  # leftovers of writes a kill interrupted
            for leftover in Path(self.dirpath).glob(".*.tmp-*"):
                leftover.unlink(missing_ok=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if (self.save_last and not self._should_skip_saving_checkpoint(trainer)
                and not self._should_save_on_train_epoch_end(trainer)):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning writes 'last' at the end only when it never wrote one: a run whose last
        # validation came before its last step would end with an older 'last'.
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        # Called by Lightning to resolve ckpt_path="last" (before setup: the folder is computed here).
        newest = newest_valid_checkpoint(self.run_folder(trainer), trainer.default_root_dir)
        if newest is None:
            return set()
        if newest.is_dir():  # DeepSpeed unpickles its files freely: scan them before it does
            from lvdm.checkpoints.load import check_deepspeed_checkpoint

            check_deepspeed_checkpoint(newest)
        elif trainer.is_global_zero:
            self._catch_up_last(newest, Path(self.run_folder(trainer)))
        return {os.path.normpath(newest)}

    def _catch_up_last(self, newest: Path, folder: Path) -> None:
        """Make ``last.ckpt`` the checkpoint a resume starts from when a newer one exists (a kill
        between Lightning's top-k write and its ``last`` write of one step, a SLURM ``hpc_ckpt``):
        a run resumed at ``max_steps`` trains no step, writes nothing, and would otherwise end
        with ``last.ckpt`` one step behind. A hard link renamed into place (a copy where the
        filesystem has no hard links): atomic, and no second copy of the data."""
        last = folder / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if not self.save_last or "{" in self.CHECKPOINT_NAME_LAST or newest == last or not folder.is_dir():
            return
        tmp = last.parent / f".{last.name}.tmp-{os.getpid()}"
        try:
            try:
                os.link(newest, tmp)
            except OSError:
                shutil.copyfile(newest, tmp)
            os.replace(tmp, last)
        finally:
            tmp.unlink(missing_ok=True)
