"""Skipped samples as metrics: ``data/skipped/<reason>`` every ``log_every_n_steps`` and a
summary line at the end of fit, from the data module's ``skip_reasons``
(:class:`lvdm.data.stream_guard.DataGuard`). ``LatentDiffusionModule`` adds it to every trainer."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


def _counts(trainer: L.Trainer) -> dict[str, int] | None:
    datamodule = getattr(trainer, "datamodule", None)
    counts = getattr(datamodule, "skip_reasons", None)
    return dict(counts) if counts is not None else None


class DataHealth(Callback):
    """Log the data module's skip counts by reason (this rank's) and print them after fit."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        counts = _counts(trainer)
        if counts is None:
            return
        pl_module.log("data/skipped", float(sum(counts.values())), rank_zero_only=True)
        for reason, count in counts.items():
            if count:
                pl_module.log(f"data/skipped/{reason}", float(count), rank_zero_only=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = _counts(trainer)
        if counts is None:
            return
        total = sum(counts.values())
        detail = ", ".join(f"{reason}: {count}" for reason, count in counts.items() if count)
        rank_zero_info(f"data: {total} sample(s) skipped" + (f" ({detail})" if detail else ""))
