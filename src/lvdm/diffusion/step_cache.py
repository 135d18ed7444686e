"""Step caching: skip a backbone's block stack on sampling steps whose conditioning barely moved.

Consecutive sampling steps of a diffusion transformer change its block stack's *residual*
(output tokens minus input tokens) little while the timestep's modulation changes little
(the observation of TeaCache, "Timestep Embedding Tells: It's Time to Cache", Liu et al. 2024).
:class:`StepCache` wraps one sampling run of a backbone: at each backbone call it measures the
relative L1 change of the backbone's *indicator* since the previous call (TeaCache's: the first
block's normalised input modulated by the timestep, which moves with both the latents and the
time) and adds it to an accumulator.
While the accumulated change stays below ``threshold`` the call reuses the last computed
residual (``tokens_out = tokens_in + residual``: no block runs); otherwise the blocks run, the
residual is refreshed and the accumulator reset. The first and the last call always compute.

The hook is the backbone contract's optional ``run_blocks(tokens, indicator, blocks)``
(:mod:`lvdm.models.contract`): the backbone runs its whole block stack as ``blocks(tokens)``
through that method (``indicator()`` computes the indicator, only when asked), and the cache
replaces it on the instance for the run. TeaCache's per-model polynomial that rescales the
indicator's change is not applied: the threshold is on the raw relative change. Under classifier-free
guidance both halves are one batch; the residual keeps the batch dimension (each row reuses its
own residual) and the decision is taken for the whole call on the largest accumulated change of
any row, so no row is skipped past the threshold. A call whose tokens have another shape than the
cached residual (a guidance interval switching between one and two halves) computes.

Not combined with sequence parallelism (its hooks cut the tokens at the first block, which a
skipped step does not run). Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

__all__ = ["StepCache", "cached_steps", "check_threshold"]

Blocks = Callable[[torch.Tensor], torch.Tensor]
Indicator = Callable[[], torch.Tensor]


def check_threshold(threshold: Optional[float]) -> float:
    """``threshold`` as a float (None: 0, caching off); one clear error if negative or not finite."""
    try:
        value = 0.0 if threshold is None else float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"step_cache threshold must be a finite number >= 0 (0: off; e.g. 0.1), got {threshold!r}")
    return value


def relative_l1(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Per batch row: ``mean|now - before| / mean|before|`` (``[B]``, float32)."""
    now, before = now.float().reshape(len(now), -1), before.float().reshape(len(before), -1)
    return (now - before).abs().mean(1) / before.abs().mean(1).clamp(min=1e-12)


class StepCache:
    """The cache state of one sampling run of ``num_steps`` backbone calls.

    Args:
        threshold: largest accumulated relative change of the indicator over which a residual is
            reused (0: every call computes).
        num_steps: backbone calls of the run (the sampler's steps: one call per step); the first
            and the call numbered ``num_steps - 1`` always compute.

    ``computed`` and ``skipped`` count the calls that ran the block stack and those that reused it.
    """

    def __init__(self, threshold: float, num_steps: int):
        self.threshold = check_threshold(threshold)
        if num_steps < 1:
            raise ValueError(f"step_cache needs num_steps >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.calls = self.computed = self.skipped = 0
        self.accumulated: Optional[torch.Tensor] = None
        self.previous: Optional[torch.Tensor] = None
        self.residual: Optional[torch.Tensor] = None

    def _reuse(self, tokens: torch.Tensor, indicator: torch.Tensor) -> bool:
        """Whether this call may reuse the residual (updates the accumulator)."""
        step, previous = self.calls, self.previous
        self.previous = indicator
        if previous is None or previous.shape != indicator.shape or self.residual is None:
            return False
        if self.residual.shape != tokens.shape or step == 0 or step >= self.num_steps - 1:
            return False
        change = relative_l1(indicator, previous)
        self.accumulated = change if self.accumulated is None else self.accumulated + change
        return bool(self.accumulated.max() < self.threshold)

    def run_blocks(self, tokens: torch.Tensor, indicator: Indicator, blocks: Blocks) -> torch.Tensor:
        """The backbone's block stack on ``tokens`` (``blocks(tokens)``) or its cached residual."""
        reuse = self._reuse(tokens, indicator().detach())
        self.calls += 1
        if reuse:
            self.skipped += 1
            return tokens + self.residual.to(tokens.dtype)
        out = blocks(tokens)
        self.computed += 1
        self.residual = (out - tokens).detach()
        self.accumulated = None
        return out


def _hook(model: nn.Module) -> Callable:
    run = getattr(model, "run_blocks", None)
    if not callable(run):
        raise ValueError(f"{type(model).__name__} has no run_blocks(tokens, indicator, blocks) hook (backbone "
                         "contract): step caching needs it; sample with step_cache=0")
    return run


@contextmanager
def cached_steps(model: nn.Module, threshold: Optional[float], num_steps: int) -> Iterator[Optional[StepCache]]:
    """Within the block, ``model`` (a backbone with the contract's ``run_blocks`` hook) caches its
    block stack as :class:`StepCache` for ``num_steps`` calls; yields the cache (None, and the
    model untouched, when ``threshold`` is 0 or None)."""
    if not check_threshold(threshold):
        yield None
        return
    _hook(model)
    if "run_blocks" in vars(model):
        raise RuntimeError(f"{type(model).__name__} already samples under a step cache")
    cache = StepCache(threshold, num_steps)
    model.run_blocks = cache.run_blocks
    try:
        yield cache
    finally:
        del model.run_blocks
