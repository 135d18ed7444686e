"""Lightning's CLI with lvdm's defaults: what ``lvdm fit|validate|test`` build.

* the resolved recipe is saved to the log dir and logged as text (:class:`SaveRecipe`);
* the progress bar counts epochs correctly for step-bounded runs (:class:`StepProgressBar`)
  unless the recipe names its own;
* every run checkpoints into ``<default_root_dir>/checkpoints``, atomically, and ``--ckpt_path
  last`` finds the newest valid checkpoint there (:class:`~lvdm.training.callbacks.run_checkpoint.RunCheckpoint`,
  added when the recipe configures no ``ModelCheckpoint``), and a run resumed with ``--ckpt_path``
  logs into its existing ``version_N`` folder;
* ``--ckpt_path`` is a stranger's file: the recipe Lightning merges from it passes the safe
  builder's checks first (:func:`lvdm.checkpoints.stored_recipe.check_stored_recipe`), and whatever path the
  trainer resumes from (given, ``last``, ``hpc``, SLURM's automatic ``hpc_ckpt_N.ckpt``) is loaded
  weights-only, a DeepSpeed directory scanned before DeepSpeed unpickles it
  (:func:`guard_checkpoint_loading`);
* a recipe that names a class by the path it had before a move still parses, with a warning
  naming the new path (:func:`read_moved_class_paths`, the table in :mod:`lvdm.checkpoints.moved`);
* Lightning's advertising tips are not printed.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lvdm.checkpoints.atomic import reuse_log_versions
from lvdm.checkpoints.moved import current_path, update_class_paths
from lvdm.training.callbacks.run_checkpoint import RunCheckpoint
from lvdm.training.callbacks.media import SaveRecipe
from lvdm.training.callbacks.progress import StepProgressBar
from lvdm.utils import applied_thread_plan

__all__ = ["LvdmCLI", "guard_checkpoint_loading", "quiet_lightning_tips", "read_moved_class_paths"]


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


def guard_checkpoint_loading(strategy) -> None:
    """Make ``strategy.load_checkpoint`` (what every resume calls, whichever way Lightning found
    the path) safe for a stranger's file: a DeepSpeed directory under any name is scanned before
    DeepSpeed unpickles it, and a file is read weights-only (Lightning would unpickle a remote
    one freely by default). Refusals name the file in one line."""
    from lvdm.checkpoints.load import UnsafeCheckpointError, check_deepspeed_checkpoint, is_deepspeed_checkpoint

    load = strategy.load_checkpoint

    def load_checkpoint(checkpoint_path, weights_only: Optional[bool] = None) -> dict[str, Any]:
        if is_deepspeed_checkpoint(checkpoint_path):
            check_deepspeed_checkpoint(checkpoint_path)
        try:
            return load(checkpoint_path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"refusing to resume from {str(checkpoint_path)!r}: it is not a plain weights file (loading it could "
                f"run code). torch said: {str(err).splitlines()[0]}"
            ) from None

    strategy.load_checkpoint = load_checkpoint


def read_moved_class_paths(mode: str = "omegaconf+") -> None:
    """Make jsonargparse's ``mode`` loader (every ``--config`` file and command-line value goes
    through it) bring moved ``class_path``s up to date, warning once per old path."""
    from jsonargparse import set_loader
    from jsonargparse._optionals import get_omegaconf_loader

    load = get_omegaconf_loader(mode)

    def load_current(text: str) -> Any:
        value = load(text)
        if isinstance(value, str) and value.startswith("lvdm.") and (new := current_path(value)) != value:
            changed = [(value, new)]
            value = new
        else:
            value, changed = update_class_paths(value)
        for old, new in dict(changed).items():
            rank_zero_warn(f"the recipe names {old!r}, which now lives at {new!r}: update the recipe")
        return value

    set_loader(mode, load_current)


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
        guard_checkpoint_loading(trainer.strategy)
        plan = applied_thread_plan()
        if plan is not None:  # said once the recipe parsed, so a config error stays one line
            rank_zero_info(f"lvdm: CPU threads: {plan.threads or 'default'} ({plan.reason})")
        for callback in trainer.callbacks:  # say where checkpoints go before fit (RunCheckpoint.setup agrees)
            if isinstance(callback, RunCheckpoint) and callback.dirpath is None:
                callback.dirpath = callback.run_folder(trainer)
        resuming = self.subcommand == "fit" and self.config_init["fit"].get("ckpt_path")
        if resuming and reuse_log_versions(trainer):
            for callback in trainer.callbacks:  # a resumed run's recipe replaces the config.yaml there
                if isinstance(callback, SaveRecipe):
                    callback.overwrite = True
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning's merge of the recipe stored in ``--ckpt_path`` into the run's config, with
        the file read weights-only and the recipe checked by the safe builder first (Lightning's
        own merge instantiates whatever the file names)."""
        from lvdm.checkpoints.load import torch_load
        from lvdm.checkpoints.stored_recipe import check_stored_recipe, current_recipe

        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return
        ckpt = torch_load(path)
        hparams = current_recipe(ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
        if "_instantiator" not in hparams:  # not written by `lvdm fit`: no recipe to merge, the run's own stands
            return
        check_stored_recipe(hparams, source=f"checkpoint {str(path)!r}")
        hparams.pop("_instantiator")
        model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except SystemExit:
            raise ValueError(f"checkpoint {str(path)!r}: its stored recipe does not merge with the run's config "
                             "(see the message above)") from None
