"""Classifier-free guidance as a wrapper around the denoiser, and guidance schedules
(:class:`GuidanceSchedule`): guidance on an interval of noise levels, CFG-Zero* and APG."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lvdm.diffusion.objectives import Objective, RectifiedFlow

METHODS = ("cfg", "cfg_zero_star", "apg")


def pad_tokens(x: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[B, L, D]`` and mask ``[B, L]`` padded at the end to ``length`` (masked out)."""
    extra = length - x.shape[1]
    if extra <= 0:
        return x, mask
    return F.pad(x, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def check_guidance_scale(scale: float, name: str) -> float:
    """``scale`` if it is a valid guidance scale (``>= 0``), else a ``ValueError`` naming ``name``.
    A negative scale steers away from the prompt (``u + scale · (c − u)``), never what is meant."""
    if not scale >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be >= 0 (1: no guidance, 0: unconditional), got {scale}")
    return scale


@dataclass(frozen=True)
class GuidanceSchedule:
    """How classifier-free guidance is applied at each sampling step. The defaults are plain
    classifier-free guidance, ``u + scale · (c − u)`` at every step, exactly as without a schedule.

    Noise levels ``t`` are fractions of the process in [0, 1] (1 = pure noise): rectified flow's
    ``t``, DDPM's timestep / ``num_train_timesteps``.

    Args:
        interval: ``(lo, hi)``: guide only at steps with ``lo <= t <= hi``; the other steps take
            the conditional prediction alone, one model evaluation instead of two (Kynkäänniemi
            et al. 2024, "Applying guidance in a limited interval improves sample and distribution
            quality in diffusion models": guidance at high noise costs diversity, at low noise it
            does little). ``hi < 1`` leaves the first, noisiest steps unguided; ``lo > 0`` the last
            ones (CFG truncation).
        method: how the two predictions combine: ``cfg`` (``u + scale · (c − u)``);
            ``cfg_zero_star`` (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for
            Flow Matching Models": the unconditional velocity is first scaled by
            ``s* = <v_c, v_u> / ||v_u||²`` per sample, ``s*·v_u + scale · (v_c − s*·v_u)``); ``apg``
            (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance Scales
            in Diffusion Models", adaptive projected guidance on the denoised prediction
            ``x0 = x_t − t·v``: the update ``c − u`` is split into its part parallel to ``c`` and
            the rest, and the parallel part, which oversaturates, is weighted by ``apg_eta``).
            ``cfg_zero_star`` and ``apg`` need a rectified-flow objective.
        zero_init_steps: the first this many sampler steps output a zero velocity and evaluate
            nothing (CFG-Zero*'s zero-init: early velocity estimates are worse than none).
            Rectified flow only. 0: none.
        apg_eta: APG's weight of the parallel part of the update, ``>= 0`` (0: dropped, the
            paper's default; 1: kept as in CFG).
        apg_norm_threshold: APG's ``r``: the update's norm per sample is capped at ``r``
            (0: no cap).
        apg_momentum: APG's ``β`` in (−1, 1): the update becomes a running sum
            ``Δ_k + β·Δ̄_{k−1}`` over the guided steps (the paper uses a negative ``β``; 0: none).
    """

    interval: tuple[float, float] = (0.0, 1.0)
    method: Literal["cfg", "cfg_zero_star", "apg"] = "cfg"
    zero_init_steps: int = 0
    apg_eta: float = 0.0
    apg_norm_threshold: float = 0.0
    apg_momentum: float = 0.0

    def __post_init__(self):
        interval = tuple(self.interval)
        if len(interval) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in interval):
            raise ValueError(f"guidance interval must be two numbers (lo, hi), got {self.interval!r}")
        lo, hi = interval
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"guidance interval (lo, hi) must have 0 <= lo <= hi <= 1 (noise levels), got {interval}")
        object.__setattr__(self, "interval", (float(lo), float(hi)))
        if self.method not in METHODS:
            raise ValueError(f"guidance method must be one of {', '.join(METHODS)}, got {self.method!r}")
        steps = self.zero_init_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"zero_init_steps must be a whole number >= 0, got {self.zero_init_steps!r}")
        for name, ok, rule in (("apg_eta", self.apg_eta >= 0, ">= 0"),
                               ("apg_norm_threshold", self.apg_norm_threshold >= 0, ">= 0 (0: no cap)"),
                               ("apg_momentum", -1 < self.apg_momentum < 1, "in (-1, 1) (0: none)")):
            if not ok:  # also refuses NaN
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        if self.method != "apg" and (self.apg_eta, self.apg_norm_threshold, self.apg_momentum) != (0, 0, 0):
            raise ValueError("apg_eta, apg_norm_threshold and apg_momentum are APG settings; "
                             f"method is {self.method!r}")

    @property
    def needs_flow(self) -> bool:
        """Whether it works on velocities, which only a rectified-flow objective defines."""
        return self.method != "cfg" or self.zero_init_steps > 0


def _sample_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, kept broadcastable, in at least float32."""
    wide = torch.promote_types(a.dtype, torch.float32)
    return (a.to(wide) * b.to(wide)).sum(_sample_dims(a), keepdim=True)


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(torch.promote_types(x.dtype, torch.float32)).tiny


def cfg_zero_star(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG-Zero*'s combination of velocities: ``s*·v_u + scale · (v_c − s*·v_u)`` with the
    per-sample ``s* = <v_c, v_u> / ||v_u||²`` (the multiple of ``v_u`` closest to ``v_c``)."""
    s = (_dot(cond, uncond) / _dot(uncond, uncond).clamp_min(_tiny(uncond))).to(cond.dtype)
    return s * uncond + scale * (cond - s * uncond)


def apg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, eta: float = 0.0, norm_threshold: float = 0.0,
        momentum: float = 0.0, previous: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive projected guidance of denoised predictions ``c``, ``u``: ``(guided, update)``.
    ``Δ = c − u`` (plus ``momentum · previous``, the last ``update``), its norm per sample
    capped at ``norm_threshold`` (0: no cap), split into ``Δ∥``, its projection on ``c``, and
    ``Δ⊥ = Δ − Δ∥``; ``guided = c + (scale − 1) · (Δ⊥ + eta · Δ∥)``."""
    update = cond - uncond
    if momentum and previous is not None:
        update = update + momentum * previous
    diff = update
    if norm_threshold > 0:
        norm = _dot(diff, diff).sqrt()
        diff = diff * (norm_threshold / norm.clamp_min(_tiny(diff))).clamp(max=1).to(diff.dtype)
    parallel = (_dot(diff, cond) / _dot(cond, cond).clamp_min(_tiny(cond))).to(cond.dtype) * cond
    return cond + (scale - 1) * (diff - parallel + eta * parallel), update


def _per_element(level: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Noise levels ``[B]`` or per-frame ``[B, T]`` shaped to broadcast over ``x`` ``[B, C, T, H, W]``."""
    level = level.to(x.dtype)
    return level[:, None, :, None, None] if level.ndim == 2 else level.view(-1, *([1] * (x.ndim - 1)))


Evaluate = Callable[[bool], tuple[torch.Tensor, Optional[torch.Tensor]]]


class ScheduledGuidance:
    """One sampling run's guidance rule: given ``evaluate(both)`` (the denoiser on the
    conditional rows, or on conditional and unconditional rows: ``(cond, uncond or None)``), the
    guided output at ``(x, t)`` under ``schedule``. It counts the steps (one call each, as every
    lvdm sampler makes) and keeps APG's momentum, so build one per run.

    Args:
        scale: guidance scale, ``>= 0``; 1: the conditional prediction (after zero-init).
        schedule: the schedule; ``None`` or the defaults: plain guidance at every step.
        objective: the sampling objective: it converts ``t`` to noise levels and, for
            rectified flow, outputs to velocities. Needed by any schedule but the defaults.
    """

    def __init__(self, scale: float, schedule: Optional[GuidanceSchedule] = None,
                 objective: Optional[Objective] = None):
        self.scale = check_guidance_scale(scale, "guidance_scale")
        self.schedule = schedule or GuidanceSchedule()
        if self.schedule != GuidanceSchedule() and objective is None:
            raise ValueError("a guidance schedule needs the sampling objective (its noise levels)")
        if self.schedule.needs_flow and not isinstance(objective, RectifiedFlow):
            raise ValueError(f"guidance method {self.schedule.method!r} and zero_init_steps work on velocities: they "
                             f"need a RectifiedFlow objective, got {type(objective).__name__}")
        self.objective = objective
        self.step, self.previous = 0, None

    @property
    def doubles_batch(self) -> bool:
        """Whether some step evaluates the unconditional rows too."""
        return self.scale != 1.0

    def __call__(self, evaluate: Evaluate, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step, self.step = self.step, self.step + 1
        if step < self.schedule.zero_init_steps:
            return self.objective.velocity_output(torch.zeros_like(x), x, self.objective.noise_level(t))
        inside = self._inside(t)
        if self.scale == 1.0 or (inside is not None and not inside.any()):
            return evaluate(False)[0]
        cond, uncond = evaluate(True)
        guided = self._combine(cond, uncond, x, t)
        if inside is None or inside.all():
            return guided
        return torch.where(inside.view(-1, *([1] * (guided.ndim - 1))), guided, cond)

    def _inside(self, t: torch.Tensor) -> Optional[torch.Tensor]:
        """``[B]``: whether each sample's noise level (its noisiest frame's) is in the interval;
        ``None`` when the interval is all of [0, 1]."""
        lo, hi = self.schedule.interval
        if (lo, hi) == (0.0, 1.0):
            return None
        level = self.objective.noise_level(t)
        level = level.amax(dim=1) if level.ndim == 2 else level
        return (level >= lo) & (level <= hi)

    def _combine(self, cond: torch.Tensor, uncond: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.schedule.method == "cfg":
            return uncond + self.scale * (cond - uncond)
        flow, level = self.objective, self.objective.noise_level(t)
        v_c, v_u = flow.output_velocity(cond, x, level), flow.output_velocity(uncond, x, level)
        if self.schedule.method == "cfg_zero_star":
            return flow.velocity_output(cfg_zero_star(v_c, v_u, self.scale), x, level)
        tb = _per_element(level, x)  # APG works on the denoised x0 = x_t − t·v
        s = self.schedule
        x0, self.previous = apg(x - tb * v_c, x - tb * v_u, self.scale, s.apg_eta, s.apg_norm_threshold,
                                s.apg_momentum, self.previous)
        v = torch.where(tb > 0, (x - x0) / tb.clamp_min(_tiny(tb)), v_c)  # given frames (t = 0): unguided
        return flow.velocity_output(v, x, level)


class GuidedDenoiser:
    """``model_fn(x, t, **cond)`` that runs the denoiser on conditional and unconditional text in one
    batch and extrapolates: ``u + scale · (c − u)``, or as ``schedule`` says.

    Args:
        denoiser: the DiT (called as ``denoiser(x, t, context, context_mask)``).
        context, context_mask: text tokens and mask of the prompts.
        null_context, null_context_mask: the same for the empty prompt (one row, or one per
            prompt).
        scale: guidance scale, ``>= 0``; 1 disables guidance (and the second half of the batch),
            0 gives the unconditional prediction.
        schedule: a :class:`GuidanceSchedule` (None: plain guidance at every step). Its step
            count and APG momentum live in the wrapper: build one per sampling run.
        objective: the sampling objective, which any schedule but the default needs.
        paired: micro-conditions that differ between the halves, ``name → (prompts' [B, ...],
            null's [B or 1, ...])`` (the pooled caption of MMDiT models); the other keywords
            reach both halves unchanged.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        null_context: torch.Tensor,
        null_context_mask: torch.Tensor,
        scale: float,
        schedule: Optional[GuidanceSchedule] = None,
        objective: Optional[Objective] = None,
        paired: Optional[dict[str, tuple[torch.Tensor, torch.Tensor]]] = None,
    ):
        self.denoiser = denoiser
        self.guidance = ScheduledGuidance(scale, schedule, objective)
        self.scale = self.guidance.scale
        b = context.shape[0]
        self.paired = {name: (c, n.expand_as(c) if n.shape[0] == 1 else n) for name, (c, n) in (paired or {}).items()}
        if null_context.shape[0] == 1:
            null_context = null_context.expand(b, -1, -1)
            null_context_mask = null_context_mask.expand(b, -1)
        length = max(context.shape[1], null_context.shape[1])
        self.context, self.mask = pad_tokens(context, context_mask, length)
        null_context, null_mask = pad_tokens(null_context, null_context_mask, length)
        if self.guidance.doubles_batch:
            self.context = torch.cat([self.context, null_context])
            self.mask = torch.cat([self.mask, null_mask])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        """``t`` is ``[B]`` or per-frame ``[B, T]`` (masked frames); further conditioning
        keywords pass to the denoiser, tensors doubled along the batch like ``x``."""
        return self.guidance(lambda both: self._evaluate(both, x, t, cond), x, t)

    def _evaluate(self, both: bool, x: torch.Tensor, t: torch.Tensor, cond: dict):
        if not both:
            b = x.shape[0]
            cond = {**cond, **{name: c[:b] for name, (c, _) in self.paired.items()}}
            return self.denoiser(x, t, self.context[:b], self.mask[:b], **cond), None
        cond = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        cond.update({name: torch.cat([c, n]) for name, (c, n) in self.paired.items()})
        out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), self.context, self.mask, **cond)
        return out.chunk(2)


class ClassGuidedDenoiser:
    """``model_fn(x, t)`` of a class-conditional DiT with classifier-free guidance: the labels and
    the null label (index ``num_classes``) run in one batch, ``u + scale · (c − u)`` (or as
    ``schedule`` says). Only the first ``in_channels`` output channels are returned (a
    learned-variance DiT's ε; lvdm's samplers do not use the variance half), as diffusers'
    ``DiTPipeline`` does.

    Args:
        denoiser: a DiT with ``num_classes > 0`` (called as ``denoiser(x, t, class_labels=...)``).
        class_labels: ``[B]`` labels in ``[0, num_classes)``.
        scale: guidance scale, ``>= 0``; 1 disables guidance (and the second half of the batch).
        schedule: a :class:`GuidanceSchedule` (None: plain guidance at every step).
        objective: the sampling objective, which any schedule but the default needs.
    """

    def __init__(self, denoiser: nn.Module, class_labels: torch.Tensor, scale: float,
                 schedule: Optional[GuidanceSchedule] = None, objective: Optional[Objective] = None):
        num_classes = getattr(denoiser, "num_classes", 0)
        if not num_classes:
            raise ValueError("class labels need a class-conditional denoiser (num_classes > 0)")
        bad = class_labels[(class_labels < 0) | (class_labels >= num_classes)]
        if len(bad):
            raise ValueError(f"class label {int(bad[0])} is out of range: the model has classes 0..{num_classes - 1}")
        self.denoiser = denoiser
        self.guidance = ScheduledGuidance(scale, schedule, objective)
        self.scale = self.guidance.scale
        self.labels = class_labels.long()
        if self.guidance.doubles_batch:
            self.labels = torch.cat([self.labels, torch.full_like(self.labels, num_classes)])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return self.guidance(lambda both: self._evaluate(both, x, t, cond), x, t)

    def _evaluate(self, both: bool, x: torch.Tensor, t: torch.Tensor, cond: dict):
        channels, labels = self.denoiser.in_channels, self.labels.to(x.device)
        if not both:
            return self.denoiser(x, t, class_labels=labels[:x.shape[0]], **cond)[:, :channels], None
        out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), class_labels=labels, **cond)
        return out[:, :channels].chunk(2)
