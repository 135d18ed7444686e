"""Exponential moving average of the weights, kept in the callback's own state.

Lightning's ``EMAWeightAveraging`` keeps the average inside an ``AveragedModel`` that
DeepSpeed checkpoints lose (ZeRO-2) or cannot build (ZeRO-3). Here the average is a plain
``{parameter name: tensor}`` dict that this callback owns and that Lightning stores under
``checkpoint["callbacks"]``, so it travels with any strategy's checkpoint and can be read
back without the training code (:func:`lvdm.checkpoints.load.load_ema_weights`).

Under DeepSpeed ZeRO the average is taken of the optimizer's float32 master weights, gathered
one parameter at a time (:mod:`lvdm.distributed.zero`), so every rank holds the same whole
average and ZeRO-3 never materialises the whole model. The gathers are collectives: under
ZeRO, ``every_n_steps`` > 1 cuts their cost.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lvdm.training.callbacks.steps import EveryNSteps
from lvdm.distributed.zero import full_fp32_parameters, is_deepspeed_parameter, is_partitioned, writable


class EMA(Callback):
    """Keep an exponential moving average of every trainable parameter.

    Args:
        decay: EMA decay per update.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
            averages are not dominated by the random initialisation.
        every_n_steps: update every this many optimizer steps.
        validate_with_ema: swap the averaged weights in for validation and testing.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, every_n_steps: int = 1, validate_with_ema: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.every_n_steps = every_n_steps
        self.validate_with_ema = validate_with_ema
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0
        self._swapped: contextlib.ExitStack | None = None  # averaged weights loaded for eval
        self._schedule = EveryNSteps(every_n_steps)

    @property
    def state_key(self) -> str:
        return "EMA"

    def _params(self, pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        if isinstance(getattr(trainer, "strategy", None), (FSDPStrategy, ModelParallelStrategy)):
            raise RuntimeError(
                f"the EMA callback does not support FSDP ({type(trainer.strategy).__name__}: its parameters are "
                "per-rank shards); train with strategies/ddp.yaml, strategies/zero2.yaml or strategies/zero3.yaml "
                "(DeepSpeed) to keep an EMA"
            )
        params = self._params(pl_module)
        if not self.shadow:  # fresh run (a resumed run already loaded its state)
            self.shadow = {n: t.clone() for n, t in full_fp32_parameters(params.items())}
        else:
            missing = set(params) - set(self.shadow)
            if missing:
                raise KeyError(f"EMA state has no entry for parameters {sorted(missing)[:5]}")
            self.shadow = {n: t.to(params[n].device) for n, t in self.shadow.items()}
        self._schedule.claim(getattr(trainer, "global_step", 0))  # a resumed run's step is done

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._schedule.due(trainer.global_step):
            return
        decay = self.current_decay()
        params = self._params(pl_module)
        if any(is_deepspeed_parameter(p) for p in params.values()):
            # One whole parameter at a time (collectives; ZeRO-3 never holds the whole model).
            for name, value in full_fp32_parameters(params.items()):
                shadow = self.shadow[name]
                shadow.lerp_(value.to(shadow.device), 1.0 - decay)
        else:
            shadow = [self.shadow[n] for n in params]
            torch._foreach_lerp_(shadow, [p.detach().float() for p in params.values()], 1.0 - decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def averaged_weights(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Temporarily load the averaged weights into ``pl_module``.

        Works under ZeRO-3 too (each partitioned parameter is gathered, overwritten and split
        back, its training value kept on the CPU meanwhile); a collective there."""
        if not self.shadow:
            yield
            return
        params = self._params(pl_module)
        backup: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, p in params.items():
                with writable(p):
                    backup[n] = p.detach().to("cpu" if is_partitioned(p) else p.device, copy=True)
                    p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    with writable(p):
                        p.copy_(backup[n])

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        if self.validate_with_ema and self._swapped is None:
            self._swapped = contextlib.ExitStack()
            self._swapped.enter_context(self.averaged_weights(pl_module))

    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._swapped is not None:
            self._swapped.close()
            self._swapped = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": {n: t.cpu() for n, t in self.shadow.items()}, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict["shadow"])
        self.num_updates = int(state_dict["num_updates"])


def averaged_weights_if_any(trainer: L.Trainer, pl_module: L.LightningModule) -> contextlib.AbstractContextManager:
    """The :class:`EMA` callback's averaged weights loaded into ``pl_module`` for a ``with``
    block when the trainer has one; the weights as they are otherwise."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
    return ema.averaged_weights(pl_module) if ema is not None else contextlib.nullcontext()
