"""Counting steps: once-per-optimizer-step triggers for callbacks that act every N steps, and a
record of what each rank trained on (:class:`StepCounter`, for multi-process tests)."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class EveryNSteps:
    """Says when a callback acting every ``every_n_steps`` optimizer steps is due.

    Lightning calls ``on_train_batch_end`` once per batch, and with gradient accumulation
    several batches end on the same ``global_step``: a step is only ever claimed once.

    Args:
        every_n_steps: the interval (0: never due; :meth:`claim` still works).
    """

    def __init__(self, every_n_steps: int):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0; got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.last_step = -1

    def claim(self, step: int) -> bool:
        """True the first time ``step`` is claimed, False after."""
        if step == self.last_step:
            return False
        self.last_step = step
        return True

    def due(self, step: int) -> bool:
        """True once for each positive multiple of ``every_n_steps``."""
        return self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and self.claim(step)


class StepCounter(Callback):
    """Writes what this rank trained on to ``<out>/rank<global rank>.json`` at the end of
    fitting: ``steps`` (training batches run), ``epochs`` (training epochs started), and per
    batch its ``keys`` and ``shapes`` — for multi-process tests that compare ranks.

    Args:
        out: folder for the per-rank files (created).
    """

    def __init__(self, out: str):
        self.out = out
        self.steps, self.epochs, self.keys, self.shapes = 0, 0, [], []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        data = batch.get("video", batch.get("latent"))
        self.keys.append(list(batch.get("key", [])))
        self.shapes.append(list(data.shape) if data is not None else [])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1

    def on_fit_end(self, trainer, pl_module) -> None:
        folder = Path(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"steps": self.steps, "epochs": self.epochs, "keys": self.keys, "shapes": self.shapes}
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
