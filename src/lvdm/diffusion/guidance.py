"""Classifier-free guidance as a wrapper around the denoiser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pad_tokens(x: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
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


class GuidedDenoiser:
    """``model_fn(x, t, **cond)`` that runs the denoiser on conditional and unconditional text in one
    batch and extrapolates: ``u + scale · (c − u)``.

    Args:
        denoiser: the DiT (called as ``denoiser(x, t, context, context_mask)``).
        context, context_mask: text tokens and mask of the prompts.
        null_context, null_context_mask: the same for the empty prompt (one row, or one per
            prompt).
        scale: guidance scale, ``>= 0``; 1 disables guidance (and the second half of the batch),
            0 gives the unconditional prediction.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        null_context: torch.Tensor,
        null_context_mask: torch.Tensor,
        scale: float,
    ):
        self.denoiser = denoiser
        self.scale = check_guidance_scale(scale, "guidance_scale")
        b = context.shape[0]
        if null_context.shape[0] == 1:
            null_context = null_context.expand(b, -1, -1)
            null_context_mask = null_context_mask.expand(b, -1)
        length = max(context.shape[1], null_context.shape[1])
        self.context, self.mask = _pad_tokens(context, context_mask, length)
        null_context, null_mask = _pad_tokens(null_context, null_context_mask, length)
        if scale != 1.0:
            self.context = torch.cat([self.context, null_context])
            self.mask = torch.cat([self.mask, null_mask])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        """``t`` is ``[B]`` or per-frame ``[B, T]`` (masked frames); further conditioning
        keywords pass to the denoiser, tensors doubled along the batch like ``x``."""
        if self.scale == 1.0:
            return self.denoiser(x, t, self.context, self.mask, **cond)
        cond = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), self.context, self.mask, **cond)
        cond_out, uncond = out.chunk(2)
        return uncond + self.scale * (cond_out - uncond)


class ClassGuidedDenoiser:
    """``model_fn(x, t)`` of a class-conditional DiT with classifier-free guidance: the labels and
    the null label (index ``num_classes``) run in one batch, ``u + scale · (c − u)``. Only the
    first ``in_channels`` output channels are returned (a learned-variance DiT's ε; lvdm's
    samplers do not use the variance half), as diffusers' ``DiTPipeline`` does.

    Args:
        denoiser: a DiT with ``num_classes > 0`` (called as ``denoiser(x, t, class_labels=...)``).
        class_labels: ``[B]`` labels in ``[0, num_classes)``.
        scale: guidance scale, ``>= 0``; 1 disables guidance (and the second half of the batch).
    """

    def __init__(self, denoiser: nn.Module, class_labels: torch.Tensor, scale: float):
        num_classes = getattr(denoiser, "num_classes", 0)
        if not num_classes:
            raise ValueError("class labels need a class-conditional denoiser (num_classes > 0)")
        bad = class_labels[(class_labels < 0) | (class_labels >= num_classes)]
        if len(bad):
            raise ValueError(f"class label {int(bad[0])} is out of range: the model has classes 0..{num_classes - 1}")
        self.denoiser = denoiser
        self.scale = check_guidance_scale(scale, "guidance_scale")
        self.labels = class_labels.long()
        if scale != 1.0:
            self.labels = torch.cat([self.labels, torch.full_like(self.labels, num_classes)])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        channels = self.denoiser.in_channels
        if self.scale == 1.0:
            return self.denoiser(x, t, class_labels=self.labels.to(x.device), **cond)[:, :channels]
        out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), class_labels=self.labels.to(x.device), **cond)
        cond_out, uncond = out[:, :channels].chunk(2)
        return uncond + self.scale * (cond_out - uncond)
