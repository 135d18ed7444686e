"""Step caching: skip a backbone's block stack on sampling steps that would change little.

Consecutive sampling steps of a diffusion transformer change its block stack's *residual*
(output tokens minus input tokens) little while its input changes little. Two rules decide,
per backbone call, whether the last computed residual is reused (``mode``):

* ``teacache`` (TeaCache, "Timestep Embedding Tells: It's Time to Cache", Liu et al. 2024): the
  relative L1 change of the backbone's *indicator* since the previous call (the first block's
  normalised input modulated by the timestep, which moves with both the latents and the time),
  rescaled by the model's calibrated polynomial (:mod:`lvdm.diffusion.cache_calibration`; the raw
  change without one), is added to an accumulator. While the sum stays below ``threshold`` the
  call returns ``tokens + residual`` (no block runs); otherwise the blocks run, the residual is
  refreshed and the sum reset.
* ``first_block`` (First-Block Cache, as in ParaAttention and diffusers' ``FirstBlockCache``): the
  first block always runs; when its residual changed, relative to the one of the last computed
  call, by less than ``threshold``, the cached residual of the remaining blocks is added to its
  output (``head + tail residual``) and they do not run.

The first and the last call always compute. Under classifier-free guidance both halves are one
batch; the residual keeps the batch dimension (each row reuses its own) and the decision is
taken for the whole call on the largest change of any row. A call whose tokens have another
shape than the cached residual (a guidance interval switching between one and two halves)
computes.

The hook is the backbone contract's optional ``run_blocks(tokens, indicator, blocks)``
(:mod:`lvdm.models.contract`): the backbone runs its block stack as ``blocks(tokens)``
(``blocks(tokens, start, stop)``: blocks ``start:stop`` only) through that method, and the cache
replaces it on the instance for the run. Not combined with sequence parallelism (its hooks cut the
tokens at the first block, which a skipped step does not run). Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import nn

if TYPE_CHECKING:
    from lvdm.diffusion.cache_calibration import Calibration

__all__ = ["MODES", "StepCache", "cached_steps", "check_mode", "check_threshold", "relative_l1", "rescale", "resolve"]

Blocks = Callable[..., torch.Tensor]
Indicator = Callable[[], torch.Tensor]
#: The caching rules (see the module docstring).
MODES = ("teacache", "first_block")
#: The ``step_cache`` value that takes the threshold from the model's calibration file.
CALIBRATED = "calibrated"


def check_threshold(threshold) -> Union[float, str]:
    """``threshold`` as a float (None: 0, caching off), or ``"calibrated"`` (the model's calibrated
    threshold, :func:`cached_steps`); one clear error if negative, not finite or another word."""
    if threshold == CALIBRATED:
        return CALIBRATED
    try:
        value = 0.0 if threshold is None else float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"step_cache threshold must be a finite number >= 0 (0: off; e.g. 0.1) or "
                         f"'{CALIBRATED}' (the model's calibration file), got {threshold!r}")
    return value


def check_mode(mode) -> str:
    """``mode`` if it is one of :data:`MODES`; one clear error otherwise."""
    if mode not in MODES:
        raise ValueError(f"step_cache_mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def relative_l1(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Per batch row: ``mean|now - before| / mean|before|`` (``[B]``, float32)."""
    now, before = now.float().reshape(len(now), -1), before.float().reshape(len(before), -1)
    return (now - before).abs().mean(1) / before.abs().mean(1).clamp(min=1e-12)


def rescale(change: torch.Tensor, coefficients: Optional[Sequence[float]]) -> torch.Tensor:
    """TeaCache's rescaled change: the polynomial ``coefficients`` (highest power first, as
    ``numpy.polyfit`` gives them) at ``change``, floored at 0; ``change`` itself without them."""
    if not coefficients:
        return change
    out = torch.zeros_like(change)
    for c in coefficients:
        out = out * change + c
    return out.clamp(min=0)


class StepCache:
    """The cache state of one sampling run of ``num_steps`` backbone calls.

    Args:
        threshold: largest (accumulated, for ``teacache``) change under which a residual is
            reused (0: every call computes).
        num_steps: backbone calls of the run (the sampler's steps: one call per step); the first
            and the call numbered ``num_steps - 1`` always compute.
        mode: ``teacache`` or ``first_block`` (see the module docstring).
        coefficients: ``teacache``'s rescaling polynomial, highest power first (None: the raw change).

    ``computed`` and ``skipped`` count the calls that ran the (remaining) block stack and those
    that reused it.
    """

    def __init__(self, threshold: float, num_steps: int, mode: str = "teacache",
                 coefficients: Optional[Sequence[float]] = None):
        self.threshold = check_threshold(threshold)
        if self.threshold == CALIBRATED:
            raise ValueError("StepCache needs a number; resolve 'calibrated' with cached_steps(calibration=...)")
        if num_steps < 1:
            raise ValueError(f"step_cache needs num_steps >= 1, got {num_steps}")
        self.mode = check_mode(mode)
        self.coefficients = None if coefficients is None else [float(c) for c in coefficients]
        self.num_steps = num_steps
        self.calls = self.computed = self.skipped = 0
        self.accumulated: Optional[torch.Tensor] = None
        self.previous: Optional[torch.Tensor] = None
        self.residual: Optional[torch.Tensor] = None

    def _may_reuse(self, tokens: torch.Tensor, step: int) -> bool:
        """Whether a residual is cached for tokens of this shape, and ``step`` is not the first or the last."""
        return self.residual is not None and self.residual.shape == tokens.shape and 0 < step < self.num_steps - 1

    def _reuse(self, tokens: torch.Tensor, indicator: torch.Tensor) -> bool:
        """``teacache``: whether this call may reuse the residual (updates the accumulator)."""
        step, previous = self.calls, self.previous
        self.previous = indicator
        if previous is None or previous.shape != indicator.shape or not self._may_reuse(tokens, step):
            return False
        change = rescale(relative_l1(indicator, previous), self.coefficients)
        self.accumulated = change if self.accumulated is None else self.accumulated + change
        return bool(self.accumulated.max() < self.threshold)

    def run_blocks(self, tokens: torch.Tensor, indicator: Indicator, blocks: Blocks) -> torch.Tensor:
        """The backbone's block stack on ``tokens`` (``blocks(tokens)``) or its cached residual."""
        if self.mode == "first_block":
            return self._first_block(tokens, blocks)
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

    def _first_block(self, tokens: torch.Tensor, blocks: Blocks) -> torch.Tensor:
        """``first_block``: block 0 runs; the rest run, or their cached residual is added."""
        step = self.calls
        self.calls += 1
        head = blocks(tokens, 0, 1)
        head_residual = (head - tokens).detach()
        previous = self.previous
        if (previous is not None and previous.shape == head_residual.shape and self._may_reuse(head, step)
                and bool(relative_l1(head_residual, previous).max() < self.threshold)):
            self.skipped += 1
            return head + self.residual.to(head.dtype)
        out = blocks(head, 1, None)
        self.computed += 1
        self.previous, self.residual = head_residual, (out - head).detach()
        return out


def _hook(model: nn.Module) -> Callable:
    run = getattr(model, "run_blocks", None)
    if not callable(run):
        raise ValueError(f"{type(model).__name__} has no run_blocks(tokens, indicator, blocks) hook (backbone "
                         "contract): step caching needs it; sample with step_cache=0")
    return run


def resolve(threshold, mode: str, calibration: Optional["Calibration"]) -> tuple[float, Optional[list[float]]]:
    """The threshold and rescaling polynomial a run uses: ``"calibrated"`` takes the threshold
    ``calibration`` suggests for ``mode`` (an error naming the missing file without one); an
    explicit number overrides it. ``teacache`` rescales by ``calibration``'s polynomial when
    there is one."""
    threshold, mode = check_threshold(threshold), check_mode(mode)
    if threshold == CALIBRATED:
        if calibration is None:
            raise ValueError("step_cache='calibrated' needs the model's calibration file (<checkpoint>"
                             ".step_cache.json, written by `lvdm cache calibrate`); none was loaded with this model")
        threshold = calibration.threshold(mode)
    coefficients = list(calibration.coefficients) if calibration is not None and mode == "teacache" else None
    return threshold, coefficients


@contextmanager
def cached_steps(model: nn.Module, threshold, num_steps: int, mode: str = "teacache",
                 calibration: Optional["Calibration"] = None) -> Iterator[Optional[StepCache]]:
    """Within the block, ``model`` (a backbone with the contract's ``run_blocks`` hook) caches its
    block stack as :class:`StepCache` for ``num_steps`` calls under ``mode``; ``threshold``: a
    number, or ``"calibrated"`` (``calibration``'s, :func:`resolve`). Yields the cache (None, and
    the model untouched, when the threshold is 0 or None)."""
    threshold, coefficients = resolve(threshold, mode, calibration)
    if not threshold:
        yield None
        return
    _hook(model)
    if "run_blocks" in vars(model):
        raise RuntimeError(f"{type(model).__name__} already samples under a step cache")
    cache = StepCache(threshold, num_steps, mode, coefficients)
    model.run_blocks = cache.run_blocks
    try:
        yield cache
    finally:
        del model.run_blocks
