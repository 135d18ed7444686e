"""Lightning's CLI with lvdm's defaults: what ``lvdm fit|validate|test`` build.

* the resolved recipe is saved to the log dir and logged as text (:class:`SaveRecipe`);
* the progress bar counts epochs correctly for step-bounded runs (:class:`StepProgressBar`)
  unless the recipe names its own;
* every run checkpoints into ``<default_root_dir>/checkpoints``, atomically, and ``--ckpt_path
  last`` finds the newest valid checkpoint there (:class:`~lvdm.callbacks.checkpoint.RunCheckpoint`,
  added when the recipe configures no ``ModelCheckpoint``), and a run resumed with ``--ckpt_path``
  logs into its existing ``version_N`` folder;
* a DeepSpeed checkpoint directory given to ``--ckpt_path`` is scanned before DeepSpeed unpickles it;
* Lightning's advertising tips are not printed.
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.cli import LightningCLI

from lvdm.callbacks.checkpoint import RunCheckpoint, reuse_log_versions
from lvdm.callbacks.media import SaveRecipe
from lvdm.callbacks.progress import StepProgressBar

__all__ = ["LvdmCLI", "quiet_lightning_tips"]


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning_tips() -> None:
    """Drop Lightning's "💡 Tip: try installing litlogger / litmodels" lines (rank-zero info
    messages about cloud services lvdm does not use); other messages are kept."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


class LvdmCLI(LightningCLI):
    """:class:`~lightning.pytorch.cli.LightningCLI` with :class:`SaveRecipe` and
    :class:`StepProgressBar` by default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_callback", SaveRecipe)
        super().__init__(*args, **kwargs)

    def _instantiate_trainer(self, config, callbacks):
        given = list(config.get("callbacks") or []) + list(callbacks)
        if (_RICH_AVAILABLE and config.get("enable_progress_bar") is not False
                and not any(isinstance(c, ProgressBar) for c in given)):
            callbacks = [*callbacks, StepProgressBar()]
        if config.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in given):
            callbacks = [*callbacks, RunCheckpoint()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.callbacks:  # say where checkpoints go before fit (RunCheckpoint.setup agrees)
            if isinstance(callback, RunCheckpoint) and callback.dirpath is None:
                callback.dirpath = callback.run_folder(trainer)
        resuming = self.subcommand == "fit" and self.config_init["fit"].get("ckpt_path")
        if resuming and reuse_log_versions(trainer):
            for callback in trainer.callbacks:  # a resumed run's recipe replaces the config.yaml there
                if isinstance(callback, SaveRecipe):
                    callback.overwrite = True
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        # DeepSpeed unpickles a checkpoint directory freely when Lightning resumes from it: scan
        # it first (a "last" resolved by RunCheckpoint is scanned there).
        from lvdm.checkpoint import check_deepspeed_checkpoint, is_deepspeed_checkpoint

        path = self.config_init[subcommand].get("ckpt_path")
        if path and path not in ("last", "best", "hpc") and is_deepspeed_checkpoint(path):
            check_deepspeed_checkpoint(path)
        super()._run_subcommand(subcommand)
