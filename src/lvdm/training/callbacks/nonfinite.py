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

A diverging run can stay finite (a loss of 1e23 for hundreds of steps, finite weights): a step
whose loss is above ``spike_factor`` (100) times the running median of recent steps is skipped
the same way and counts toward the same limit, which then saves ``diverged-stop.ckpt`` (the
weights from before the spikes) and stops with :class:`TrainingDivergedError`.

``LatentDiffusionModule`` adds a default guard to every trainer that has none
(``configure_callbacks``); the ``callbacks/nonfinite_guard.yaml`` fragment configures it.

Under data parallelism the decisions are reduced over ranks (one boolean each per step), so
every rank skips the same steps. Under DeepSpeed the gradients live in the engine's buffers, so a
non-finite loss stops training before the update. With fp16 mixed precision the gradient
scaler already skips overflowing steps; the guard only counts them. Under both, loss spikes
cannot be skipped: they are counted, and too many in a row stop training.
"""

from __future__ import annotations

import statistics
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lvdm.utils import nonfinite_tensors


class NonFiniteTrainingError(RuntimeError):
    """Training stopped because losses or gradients stayed non-finite."""


class TrainingDivergedError(NonFiniteTrainingError):
    """Training stopped because the loss stayed far above its running median (it diverged)."""


class NonFiniteGuard(Callback):
    """Skip optimizer steps with a non-finite loss or gradient, or a loss spike; stop after too
    many in a row.

    A *loss spike* is a step whose loss is above ``spike_factor`` times the median of the last
    ``spike_window`` steps that were not skipped (a positive loss is assumed; the rule waits for
    one accepted step, and is off while the median is not positive). A diverging run — a
    learning rate far too high — has a finite loss of 1e20 while its weights stay finite: the
    non-finite checks never fire, this rule does. Noisy training stays below the default 100×,
    but not always below 10×: a small batch's diffusion loss depends on the timesteps it drew,
    and the demo's well-trained shapes model had a legitimate step at 0.905 against a median of
    0.059 (15×).

    Args:
        max_consecutive: skipped steps in a row tolerated; the next one stops training
            (0: stop at the first skipped step).
        check_gradients: also check every gradient (one reduction over the gradients per
            step); with ``False`` only the loss is checked.
        check_checkpoints: refuse to save a checkpoint whose weights hold NaN or inf.
        spike_factor: a loss above this many times its running median is a spike (``None``:
            no spike rule).
        spike_window: steps in the running median.
    """

    def __init__(self, max_consecutive: int = 5, check_gradients: bool = True, check_checkpoints: bool = True,
                 spike_factor: float | None = 100.0, spike_window: int = 100):
        if max_consecutive < 0:
            raise ValueError(f"NonFiniteGuard.max_consecutive must be >= 0, got {max_consecutive}")
        if (spike_factor is not None and not spike_factor > 1) or spike_window < 1:
            raise ValueError(f"NonFiniteGuard needs spike_factor > 1 (or None) and spike_window >= 1, "
                             f"got {spike_factor}, {spike_window}")
        self.max_consecutive = max_consecutive
        self.check_gradients = check_gradients
        self.check_checkpoints = check_checkpoints
        self.spike_factor = spike_factor
        self.consecutive = 0
        self.skipped = 0
        self.losses: deque[float] = deque(maxlen=spike_window)  # losses of the last accepted steps
        self._loss_finite: torch.Tensor | None = None  # AND of the micro-batch losses since the last step
        self._loss_sum: torch.Tensor | None = None  # sum of the micro-batch losses since the last step

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "losses": list(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.losses.clear()
        self.losses.extend(float(v) for v in state_dict.get("losses", []))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        loss = loss.detach()
        finite = torch.isfinite(loss).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        total = loss.float().sum()
        self._loss_sum = total if self._loss_sum is None else self._loss_sum + total

    def _finite(self, optimizer: torch.optim.Optimizer, gradients: bool) -> torch.Tensor:
        ok = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
        self._loss_finite = None
        if gradients:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                # The largest |g| is finite exactly when every element is (a 2-norm could overflow).
                peaks = torch._foreach_norm(grads, float("inf"))
                ok = ok.to(peaks[0].device) & torch.isfinite(torch.stack(peaks)).all()
        return ok

    def _spike(self, loss: float | None) -> str | None:
        """Why ``loss`` is a spike, or ``None``."""
        if self.spike_factor is None or loss is None or not self.losses:
            return None
        median = statistics.median(self.losses)
        if median > 0 and loss > self.spike_factor * median:
            return f"loss {loss:.3g} above {self.spike_factor:g} x its running median {median:.3g}"
        return None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        deepspeed = isinstance(trainer.strategy, DeepSpeedStrategy)
        # under DeepSpeed the gradients are in the engine's buffers: the loss decides
        nonfinite = not bool(self._finite(optimizer, self.check_gradients and not deepspeed))
        summed, self._loss_sum = self._loss_sum, None
        loss = float(summed) if summed is not None and self.spike_factor is not None and not nonfinite else None
        spike = self._spike(loss)
        if trainer.world_size > 1:  # every rank skips the same steps
            nonfinite = trainer.strategy.reduce_boolean_decision(nonfinite, all=False)
            if self.spike_factor is not None:
                anywhere = trainer.strategy.reduce_boolean_decision(spike is not None, all=False)
                spike = spike or ("a loss spike on another rank" if anywhere else None)
        if not nonfinite and spike is None:
            self.consecutive = 0
            if loss is not None:
                self.losses.append(loss)
            return
        self._skip(trainer, pl_module, optimizer, deepspeed, spike if not nonfinite else None)

    def _skip(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer,
              deepspeed: bool, spike: str | None) -> None:
        self.consecutive += 1
        self.skipped += 1
        step = trainer.global_step
        if deepspeed and spike is None:
            raise NonFiniteTrainingError(
                f"non-finite loss at step {step} under DeepSpeed, whose engine updates the weights itself: stopped "
                "before the update; resume from the last checkpoint with a lower learning rate or after fixing the data"
            )
        scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
        # The optimizer skips parameters without a gradient; a gradient scaler skips non-finite
        # steps itself but needs gradients, so under it (and DeepSpeed) a spike is only counted.
        dropped = not deepspeed and not scaler
        if dropped:
            optimizer.zero_grad(set_to_none=True)
        pl_module.log("train/nonfinite_skips", float(self.skipped), rank_zero_only=True)
        what = spike or "a non-finite loss or gradient"
        if self.consecutive > self.max_consecutive:
            self._stop(trainer, step, what, spike is not None, dropped or spike is None)
        action = "skipped" if dropped or spike is None else "taken (this precision/strategy cannot skip it)"
        rank_zero_warn(
            f"step {step}: {what}, optimizer step {action} "
            f"({self.consecutive} in a row, {self.skipped} in all; training stops after {self.max_consecutive + 1} in a row)"
        )

    def _stop(self, trainer: L.Trainer, step: int, what: str, diverged: bool, untouched: bool) -> None:
        path = self._save_stop_checkpoint(trainer, "diverged-stop.ckpt" if diverged else "nonfinite-stop.ckpt")
        kept = ("the weights and optimizer state were left untouched by all of them and saved to"
                if untouched else "the current state was saved to")
        fix = ("Lower the learning rate (or check the data) and resume from that file; if the loss "
               "rose for a good reason (new data), raise NonFiniteGuard.spike_factor (null: no spike rule)"
               if diverged else "Lower the learning rate (or check the data and the precision) and resume from that file")
        error = TrainingDivergedError if diverged else NonFiniteTrainingError
        raise error(f"{self.consecutive} optimizer steps in a row (up to step {step}) had {what}"
                    f"{': training diverged' if diverged else ''}; {kept} {path}. {fix} with --ckpt_path {path}")

    def _save_stop_checkpoint(self, trainer: L.Trainer, name: str) -> str:
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else Path(trainer.default_root_dir)
        path = folder / name
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
