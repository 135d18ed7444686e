"""Per-model calibration of step caching (:mod:`lvdm.diffusion.step_cache`).

TeaCache's threshold is on the indicator's relative change rescaled by a polynomial fitted per
model (Liu et al. 2024): the fit maps "how much the first block's modulated input moved" to "how
much the block stack's residual moved", which is what reusing the residual gets wrong.
:class:`Recorder` samples in full while it records, per backbone call and batch row, the
indicator's relative L1 change since the previous call, the residual's relative L1 change, and
(for ``first_block``) a strided sample of the first block's residual; :func:`calibrate` fits the
polynomial (``numpy.polyfit`` of the residual change on the indicator change) and, for each mode,
replays the cache's rule on the recorded run to suggest the smallest threshold that reaches a
target speed-up (block evaluations of the full run over those of the cached one; ``first_block``
pays for its first block at every step, the backbone's ``block_class`` units counted). The replay
follows the full trajectory, so the speed-up of a real cached run differs a little; it is
predicted for a batch like the recorded one (the rule decides on the largest row's change).

:class:`Calibration` is saved as a small JSON file next to the checkpoint
(:func:`calibration_path`: ``<checkpoint>.step_cache.json``), which
:func:`lvdm.checkpoints.load.load_module` reads into the module (``step_cache_calibration``).
Pure torch and numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from lvdm.diffusion.step_cache import MODES, check_mode, relative_l1, rescale

__all__ = ["Calibration", "Recorder", "calibrate", "calibration_path", "fit_polynomial", "read_calibration",
           "recording", "replay_first_block", "replay_teacache", "suggest_threshold", "write_calibration"]

FORMAT = "lvdm-step-cache-calibration"
#: Elements of each row's first-block residual kept for the ``first_block`` replay.
HEAD_SAMPLE = 8192


@dataclass(frozen=True)
class Calibration:
    """A model's step-cache calibration.

    Args:
        coefficients: TeaCache's rescaling polynomial, highest power first (``numpy.polyfit``).
        thresholds: the suggested threshold of each mode (``teacache``: on the rescaled change).
        speedups: the speed-up (block evaluations, full over cached: ``first_block`` counts its
            first block at every step) each suggestion gave on the recorded run.
        target_speedup: the speed-up the suggestions aim at.
        steps: sampler steps of the recorded run (a threshold holds for about this step count).
        path: the file it was read from (None: not read from a file).
    """

    coefficients: tuple[float, ...]
    thresholds: dict[str, float]
    speedups: dict[str, float]
    target_speedup: float
    steps: int
    path: Optional[str] = None

    def threshold(self, mode: str) -> float:
        """The suggested threshold of ``mode``."""
        return self.thresholds[check_mode(mode)]


def calibration_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's calibration lives: ``<checkpoint>.step_cache.json`` (e.g. ``last.ckpt.step_cache.json``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".step_cache.json")


def write_calibration(calibration: Calibration, path: str | Path) -> Path:
    """Save ``calibration`` as JSON at ``path``; returns the path."""
    fields = {k: v for k, v in asdict(calibration).items() if k != "path"}
    fields["coefficients"] = list(fields["coefficients"])
    path = Path(path)
    path.write_text(json.dumps({"format": FORMAT, "version": 1, **fields}, indent=2) + "\n")
    return path


def _finite(value, name: str, path: Path, low: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"step-cache calibration {str(path)!r}: {name} must be a finite number >= {low:g}, "
                         f"got {value!r}")
    return float(value)


def read_calibration(path: str | Path) -> Calibration:
    """The :class:`Calibration` in ``path``; a missing, unreadable or malformed file fails in one
    line naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"step-cache calibration {str(path)!r} does not exist "
                                "(write it with `lvdm cache calibrate`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"step-cache calibration {str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"step-cache calibration {str(path)!r} is not an lvdm calibration file "
                         f"(no \"format\": \"{FORMAT}\"); write it with `lvdm cache calibrate`")
    try:
        coefficients = tuple(_finite(c, "coefficients", path) for c in data["coefficients"])
        thresholds = {mode: _finite(data["thresholds"][mode], f"thresholds.{mode}", path, 0) for mode in MODES}
        speedups = {mode: _finite(data["speedups"][mode], f"speedups.{mode}", path, 0) for mode in MODES}
        target, steps = _finite(data["target_speedup"], "target_speedup", path, 1), data["steps"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"step-cache calibration {str(path)!r} lacks {err} (or it has the wrong type)") from None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"step-cache calibration {str(path)!r}: steps must be a whole number >= 1, got {steps!r}")
    return Calibration(coefficients, thresholds, speedups, target, steps, str(path))


class Recorder:
    """A stand-in for a backbone's ``run_blocks`` that always computes (block 0, then the rest)
    and records, per call, ``[rows]`` tensors: ``indicator_change`` and ``residual_change``
    (relative L1 since the previous call; calls after the first) and ``heads`` (a strided
    sample of each row's first-block residual, ``[rows, <= HEAD_SAMPLE]``)."""

    def __init__(self):
        self.indicator_change: list[torch.Tensor] = []
        self.residual_change: list[torch.Tensor] = []
        self.heads: list[torch.Tensor] = []
        self.block_runs = self.head_runs = self.stack_runs = 0  # the backbone's block_class units run
        self._indicator: Optional[torch.Tensor] = None
        self._residual: Optional[torch.Tensor] = None

    @property
    def head_fraction(self) -> float:
        """The share of the stack's block units in its first block (what ``first_block`` runs at every step)."""
        return self.head_runs / self.stack_runs if self.stack_runs else 0.0

    def run_blocks(self, tokens: torch.Tensor, indicator: Callable[[], torch.Tensor], blocks) -> torch.Tensor:
        ind = indicator().detach().float()
        before = self.block_runs
        head = blocks(tokens, 0, 1)
        middle = self.block_runs
        out = blocks(head, 1, None)
        self.head_runs, self.stack_runs = self.head_runs + middle - before, self.stack_runs + self.block_runs - before
        residual = (out - tokens).detach().float()
        if self._indicator is not None:
            if self._indicator.shape != ind.shape:
                raise ValueError("step-cache calibration needs every call on one batch shape: sample with a "
                                 "guidance interval covering every step")
            self.indicator_change.append(relative_l1(ind, self._indicator).cpu())
            self.residual_change.append(relative_l1(residual, self._residual).cpu())
        flat = (head - tokens).detach().float().reshape(len(tokens), -1)
        stride = max(1, flat.shape[1] // HEAD_SAMPLE)
        self.heads.append(flat[:, ::stride][:, :HEAD_SAMPLE].cpu())
        self._indicator, self._residual = ind, residual
        return out

    def count(self, *_) -> None:
        """A forward pre-hook on each block unit."""
        self.block_runs += 1


@contextmanager
def recording(model: nn.Module) -> Iterator[Recorder]:
    """Within the block, ``model``'s block stack runs through a :class:`Recorder` (yielded)."""
    if not callable(getattr(model, "run_blocks", None)):
        raise ValueError(f"{type(model).__name__} has no run_blocks(tokens, indicator, blocks) hook (backbone "
                         "contract): it cannot be calibrated for step caching")
    recorder = Recorder()
    unit = getattr(model, "block_class", None)
    hooks = [m.register_forward_pre_hook(recorder.count) for m in model.modules() if unit and isinstance(m, unit)]
    model.run_blocks = recorder.run_blocks
    try:
        yield recorder
    finally:
        del model.run_blocks
        for hook in hooks:
            hook.remove()


def fit_polynomial(x: np.ndarray, y: np.ndarray, degree: int = 4) -> np.ndarray:
    """TeaCache's rescaling polynomial: ``numpy.polyfit(x, y, degree)`` (highest power first)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y) or len(x) <= degree:
        raise ValueError(f"a degree-{degree} fit needs more than {degree} (x, y) pairs; got {len(x)} and {len(y)}")
    return np.polyfit(x, y, degree)


def replay_teacache(changes: torch.Tensor, threshold: float) -> int:
    """Block-stack runs of ``teacache``'s rule over a run of ``len(changes) + 1`` calls, where
    ``changes[i]`` ``[rows]`` is the (rescaled) change from call ``i`` to ``i + 1``."""
    calls, computed, accumulated = len(changes) + 1, min(2, len(changes) + 1), None
    for step in range(1, calls - 1):
        change = changes[step - 1]
        accumulated = change if accumulated is None else accumulated + change
        if not bool(accumulated.max() < threshold):
            computed, accumulated = computed + 1, None
    return computed


def replay_first_block(heads: list[torch.Tensor], threshold: float) -> int:
    """Remaining-stack runs of ``first_block``'s rule over the first-block residuals ``heads``."""
    computed, previous = min(2, len(heads)), heads[0] if heads else None
    for step in range(1, len(heads) - 1):
        if not bool(relative_l1(heads[step], previous).max() < threshold):
            computed, previous = computed + 1, heads[step]
    return computed


def suggest_threshold(replay: Callable[[float], float], calls: int, scale: float,
                      target: float) -> tuple[float, float]:
    """The smallest threshold on a grid up to ``scale`` whose ``replay`` (the cost, in block stacks)
    reaches ``calls / cost >= target``, and its speed-up; the fastest one on the grid when none reaches it."""
    best = (0.0, 1.0)
    for threshold in np.geomspace(max(scale, 1e-12) * 1e-4, max(scale, 1e-12), 400):
        speedup = calls / replay(float(threshold))
        if speedup >= target:
            return float(threshold), speedup
        if speedup > best[1]:
            best = (float(threshold), speedup)
    return best


def calibrate(recorder: Recorder, target_speedup: float = 2.0, degree: int = 4) -> Calibration:
    """Fit TeaCache's polynomial to ``recorder``'s run and suggest each mode's threshold for
    ``target_speedup`` (see the module docstring)."""
    if not recorder.indicator_change:
        raise ValueError("step-cache calibration needs a run of at least 2 sampling steps")
    x, y = torch.stack(recorder.indicator_change), torch.stack(recorder.residual_change)  # [calls - 1, rows]
    coefficients = fit_polynomial(x.numpy(), y.numpy(), degree)
    rescaled = rescale(x.double(), coefficients.tolist())
    calls = len(recorder.heads)
    teacache = suggest_threshold(lambda t: replay_teacache(rescaled, t), calls, float(rescaled.sum(0).max()),
                                 target_speedup)
    head_scale = max(float(relative_l1(h, recorder.heads[0]).max()) for h in recorder.heads)
    f = recorder.head_fraction  # every call runs the first block: cost in whole stacks
    first = suggest_threshold(lambda t: replay_first_block(recorder.heads, t) * (1 - f) + calls * f, calls,
                              head_scale, target_speedup)
    return Calibration(tuple(float(c) for c in coefficients), {"teacache": teacache[0], "first_block": first[0]},
                       {"teacache": teacache[1], "first_block": first[1]}, float(target_speedup), calls)
