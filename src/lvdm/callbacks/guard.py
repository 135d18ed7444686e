"""Stop one NaN from spreading: skip optimizer steps whose loss or gradients are not finite.

Without a guard, one non-finite batch writes NaN into every weight, the EMA, the optimizer's
moments and every later checkpoint, and training goes on to the end with exit code 0. The
guard checks the loss (``on_before_backward``) and the gradients (``on_before_optimizer_step``,
after the backward and before the update) and, when either is not finite, drops the gradients
(``grad = None``): torch optimizers then leave those parameters and their state untouched,
exactly what Lightning does when a ``training_step`` returns ``None``. After ``max_consecutive``
skipped steps in a row the run cannot recover by itself (a learning rate far too high, broken
data): the guard saves the current, still finite, state as ``nonfinite-stop.ckpt`` in the
checkpoint folder and stops with :class:`NonFiniteTrainingError`. It also refuses to write a
checkpoint whose weights are not finite.

``LatentDiffusionModule`` adds a default guard to every trainer that has none
(``configure_callbacks``); the ``callbacks/nonfinite_guard.yaml`` fragment configures it.

Under data parallelism the decision is reduced over ranks (one boolean per step), so every rank
skips the same steps. Under DeepSpeed the gradients live in the engine's buffers, so a
non-finite loss stops training before the update. With fp16 mixed precision the gradient
scaler already skips overflowing steps; the guard only counts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lvdm.utils import nonfinite_tensors


class NonFiniteTrainingError(RuntimeError):
    """Training stopped because losses or gradients stayed non-finite."""


class NonFiniteGuard(Callback):
    """Skip optimizer steps with a non-finite loss or gradient; stop after too many in a row.

    Args:
        max_consecutive: skipped steps in a row tolerated; the next one stops training
            (0: stop at the first non-finite step).
        check_gradients: also check every gradient (one reduction over the gradients per
            step); with ``False`` only the loss is checked.
        check_checkpoints: refuse to save a checkpoint whose weights hold NaN or inf.
    """

    def __init__(self, max_consecutive: int = 5, check_gradients: bool = True, check_checkpoints: bool = True):
        if max_consecutive < 0:
            raise ValueError(f"NonFiniteGuard.max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.check_gradients = check_gradients
        self.check_checkpoints = check_checkpoints
        self.consecutive = 0
        self.skipped = 0
        self._loss_finite: torch.Tensor | None = None  # AND of the micro-batch losses since the last step

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def _finite(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        ok = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
        self._loss_finite = None
        if self.check_gradients:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                # The largest |g| is finite exactly when every element is (a 2-norm could overflow).
                peaks = torch._foreach_norm(grads, float("inf"))
                ok = ok.to(peaks[0].device) & torch.isfinite(torch.stack(peaks)).all()
        return ok

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        deepspeed = isinstance(trainer.strategy, DeepSpeedStrategy)
        if deepspeed:  # gradients are in the engine's buffers: the loss decides
            ok = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
            self._loss_finite = None
        else:
            ok = self._finite(optimizer)
        skip = not bool(ok)
        if trainer.world_size > 1:
            skip = trainer.strategy.reduce_boolean_decision(skip, all=False)
        if not skip:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.skipped += 1
        step = trainer.global_step
        if deepspeed:
            raise NonFiniteTrainingError(
                f"non-finite loss at step {step} under DeepSpeed, whose engine updates the weights itself: stopped "
                "before the update; resume from the last checkpoint with a lower learning rate or after fixing the data"
            )
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            optimizer.zero_grad(set_to_none=True)  # the optimizer skips parameters without a gradient
        pl_module.log("train/nonfinite_skips", float(self.skipped), rank_zero_only=True)
        if self.consecutive > self.max_consecutive:
            path = self._save_stop_checkpoint(trainer)
            raise NonFiniteTrainingError(
                f"{self.consecutive} optimizer steps in a row (up to step {step}) had a non-finite loss or gradient; "
                f"the weights and optimizer state were left untouched by all of them and saved to {path}. "
                "Lower the learning rate (or check the data and the precision) and resume from that file with "
                f"--ckpt_path {path}"
            )
        rank_zero_warn(
            f"step {step}: non-finite loss or gradient, optimizer step skipped "
            f"({self.consecutive} in a row, {self.skipped} in all; training stops after {self.max_consecutive + 1} in a row)"
        )

    def _save_stop_checkpoint(self, trainer: L.Trainer) -> str:
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else Path(trainer.default_root_dir)
        path = folder / "nonfinite-stop.ckpt"
        trainer.save_checkpoint(path)
        return str(path)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.check_checkpoints:
            return
        weights = checkpoint.get("state_dict")
        if weights is None:  # DeepSpeed: the engine writes the weights; check this rank's parameters
            weights = dict(pl_module.named_parameters())
        bad = nonfinite_tensors(weights)
        if bad:
            raise NonFiniteTrainingError(
                f"refusing to save a checkpoint at step {trainer.global_step}: weights {', '.join(bad)} hold NaN/inf"
            )
