"""The backbone contract: what every lvdm denoiser takes and what it declares.

A backbone is a pure-torch ``nn.Module`` (no Lightning, no ``torch.distributed``) that meets
:class:`Backbone`. Everything around the model reads only this contract, never a class name:

==========================================  ==============================================
reader                                      reads
==========================================  ==============================================
``SequenceParallel`` / ``parallelize``      ``sequence_parallel_plan``, ``num_heads``
``ActivationCheckpointing`` / ``parallelize``  ``block_class`` (the checkpoint unit)
``CompileBlocks`` / ``parallelize``         ``block_class`` (the compile unit)
``ThroughputMonitor``, ``lvdm estimate``,   ``forward_flops``, ``patch_size``
:mod:`lvdm.perf.step_flops` (MFU)
LoRA (``peft``)                             ``lora_targets``
the module and samplers                     ``forward``, ``micro_conditions``
``init_from``                               ``fixed_position_settings``
``StepCache`` (sampling)                    ``run_blocks`` (optional)
==========================================  ==============================================

:class:`~lvdm.models.dit.DiT`, :class:`~lvdm.models.stdit.STDiT` and :class:`~lvdm.models.mmdit.MMDiT`
meet it; ``tests/models/test_backbone_battery.py`` runs one battery of checks on every backbone and
variant, so a new backbone is done when it is added to that battery's list and passes.

One optional method, ``run_blocks(tokens, indicator, blocks) -> tokens``, is the block-stack hook:
the backbone runs its whole block stack (every ``block_class`` unit, embedders before it, final
layer after it) as ``self.run_blocks(tokens, indicator, blocks)``, where ``blocks(tokens)`` runs
the blocks on the stack's input tokens and returns its output tokens (same shape) —
``blocks(tokens, start, stop)`` runs blocks ``start:stop`` only (a first-block cache runs
``blocks(tokens, 0, 1)`` then, unless it reuses, ``blocks(head, 1, None)`` in the same call) — and
``indicator()`` computes a per-sample tensor (``[B, ...]``) whose relative change from one
sampling step to the next tracks the change of the stack's residual (TeaCache: the first block's
normalised input modulated by the timestep; called only by a cache). The backbone's
own method returns ``blocks(tokens)``; a step cache replaces it for one sampling run and may
return ``tokens + residual`` of an earlier call instead. A backbone without it refuses step caching.
A wrapped model that loops over its blocks itself (the diffusers adapters,
:mod:`lvdm.models.diffusers_adapter`) meets it by swapping its block list, while a cache is on,
for one module that runs the real blocks through ``run_blocks``.

Conditioning other than the text tokens is a named micro-condition, not a second context input:
MMDiT's pooled text vector (CLIP-L's pooled caption) is ``pooled_text`` ``[B, dim]``, its
distilled guidance scale ``guidance`` ``[B]`` and Open-Sora 2.0's given frames ``image_condition``
(a backbone that takes one packs it from the given frames' latents with
``pack_image_condition(latents, given_mask)``; :func:`image_condition_kwargs`). The signature stays the same for every backbone,
a caller that does not know a condition leaves it out (the model's default: zeros, the preset's
guidance), and guidance wrappers pass micro-conditions to both halves unchanged — right for
``guidance`` — except those paired per half (``GuidedDenoiser``'s ``paired``): the module gives the
unconditional half the null caption's pooled vector and a zero ``image_condition``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from lvdm.models.parallel_plan import SequenceSplit

__all__ = ["IMAGE_FPS", "Backbone", "is_backbone", "micro_condition_kwargs", "given_frames_condition",
           "image_condition_kwargs", "fixed_position_settings"]

#: The fps micro-condition of a still image (``T = 1``): Open-Sora 1.2's ``IMG_FPS`` (its
#: datasets give an image file 120, and its sampler 120 whenever ``num_frames`` is 1).
IMAGE_FPS = 120.0


@runtime_checkable
class Backbone(Protocol):
    """A denoiser over latent video patches (see the module docstring for who reads what).

    Attributes:
        in_channels: latent channels ``C`` of ``x``.
        patch_size: the spacetime patch ``(pt, ph, pw)``; the FLOP model and the throughput
            monitor derive the token grid from it.
        hidden_size: token width.
        num_heads: attention heads (Ulysses sequence parallelism needs them divisible by the
            group size).
        context_dim: width of the text token embeddings it takes (0: no text).
        block_class: the repeated transformer block: the unit of activation checkpointing
            and of ``torch.compile`` (and the wrap unit of sharding strategies). Every
            submodule of this class is one unit; a backbone with two block kinds (spatial and
            temporal) gives their common base class.
        sequence_parallel_plan: where sequence parallelism cuts the token sequence and gathers
            it again (:class:`~lvdm.models.parallel_plan.SequenceSplit`, plain data; settings
            the split cannot serve are listed in its ``unsupported``).
        micro_conditions: the names of the keyword arguments of ``forward`` that carry
            micro-conditions (``"fps"``, ``"resolution"``, ``"aspect_ratio"``,
            ``"class_labels"``…); the module and samplers pass only these. The module
            derives ``fps`` (``[B]``), ``resolution`` (``[B, 2]`` pixel ``(h, w)``) and
            ``aspect_ratio`` (``[B]``, ``h / w``) from the batch's pixel size and frame rate,
            and at sampling from the requested size and fps (:func:`micro_condition_kwargs`).
        fixed_position_settings: the (dotted) attribute names whose values change a
            non-learned embedding (a position code's kind, grid or scale; the timestep code's
            frequencies): two models that differ in one of them give different outputs from
            the same weights, so ``init_from`` refuses such a source (:func:`fixed_position_settings`).
        lora_targets: a regular expression that fully matches the names of the ``nn.Linear``
            modules LoRA may adapt (the string form of peft's ``target_modules``): the
            attention and MLP projections inside the blocks (not the embedders).
    """

    in_channels: int
    patch_size: tuple[int, int, int]
    hidden_size: int
    num_heads: int
    context_dim: int
    block_class: type[nn.Module]
    sequence_parallel_plan: SequenceSplit
    micro_conditions: tuple[str, ...]
    fixed_position_settings: tuple[str, ...]
    lora_targets: str

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        **micro_conditions: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the objective's target for noisy latents.

        Args:
            x: latents ``[B, C, T, H, W]`` (an image is ``T = 1``).
            timestep: ``[B]`` (or a scalar), or one per latent frame ``[B, T]``. Frame masks
                reach the backbone this way: masked-frame conditioning
                (:mod:`lvdm.diffusion.masking`) gives the frames it keeps clean their own
                (zero) time, and the backbone modulates each frame's tokens with its frame's
                time. With all frames equal, ``[B, T]`` gives the same output as ``[B]``.
            context: text token embeddings ``[B, L, context_dim]`` (``None``: the model's
                learned null caption where it has one, else an error).
            context_mask: boolean ``[B, L]``, ``True`` on real (non-padding) tokens.
            **micro_conditions: the keyword arguments named in ``micro_conditions``, each a
                tensor with one value (or row) per sample; a missing one takes the model's
                default or is derived from ``x``.

        Returns:
            ``[B, C, T, H, W]``, the shape of ``x``.

        Raises:
            ValueError: one line naming the bad input (shape, missing condition).
        """

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model: FLOPs of one forward on ``batch_size`` latents of ``(T, H, W)``
        with ``text_len`` text tokens, by component, in the convention of
        ``torch.utils.flop_counter.FlopCounterMode`` (``2·m·n·k`` per matmul; elementwise
        work not counted). Components named in :data:`lvdm.models.flops.BLOCK_PARTS` are
        computed inside the ``block_class`` units (what activation checkpointing recomputes).
        Must equal what ``FlopCounterMode`` counts on the same forward (the battery checks)."""


def is_backbone(model: object) -> bool:
    """Whether ``model`` meets :class:`Backbone` (all attributes and methods present)."""
    return isinstance(model, Backbone)


def micro_condition_kwargs(model: object, batch_size: int, height: Any = None, width: Any = None,
                           fps: Any = None) -> dict[str, torch.Tensor]:
    """The micro-condition keywords among ``fps``, ``resolution`` and ``aspect_ratio`` that
    ``model`` declares, from pixel ``height`` / ``width`` and frame rate ``fps`` (each a number
    or one value per sample; None: unknown, the keyword is left out and the model derives it).
    ``resolution`` is the pixel ``(h, w)`` and ``aspect_ratio`` ``h / w``, never the latent size."""
    declared = set(getattr(model, "micro_conditions", ()))

    def per_sample(value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32).reshape(-1).expand(batch_size)

    out = {}
    if fps is not None and "fps" in declared:
        out["fps"] = per_sample(fps)
    if height is not None and width is not None:
        h, w = per_sample(height), per_sample(width)
        if "resolution" in declared:
            out["resolution"] = torch.stack([h, w], dim=1)
        if "aspect_ratio" in declared:
            out["aspect_ratio"] = h / w
    return out


def given_frames_condition(latents: torch.Tensor, given_mask: torch.Tensor, mask_channels: int,
                           channels: int) -> torch.Tensor:
    """The image-to-video condition ``[B, channels, T, H, W]`` of latents ``[B, C, T, H, W]``
    whose frames ``given_mask`` ``[B, T]`` marks (True: given): ``mask_channels`` copies of the
    mask (1.0 on given frames), then the latents at the given frames and zeros elsewhere —
    the layout of Open-Sora 2.0's ``cond`` (1 mask channel) and Wan I2V's (4). ``channels`` is the
    backbone's ``image_condition_channels``, which must be ``mask_channels + C``."""
    b, c, t = latents.shape[:3]
    if mask_channels + c != channels:
        raise ValueError(f"image_condition_channels={channels} != {mask_channels} mask channels + "
                         f"{c} latent channels: these latents do not fit this backbone's image condition")
    if tuple(given_mask.shape) != (b, t):
        raise ValueError(f"given_mask must be [batch, latent frames] = [{b}, {t}], got {list(given_mask.shape)}")
    view = given_mask.to(latents.device, torch.bool)[:, None, :, None, None]
    mask = view.to(latents.dtype).expand(b, mask_channels, t, *latents.shape[3:])
    return torch.cat([mask, torch.where(view, latents, torch.zeros_like(latents))], dim=1)


def image_condition_kwargs(model: object, latents: torch.Tensor, given_mask: Any) -> dict[str, torch.Tensor]:
    """``{"image_condition": model.pack_image_condition(latents, given_mask)}`` when ``model``
    declares the ``image_condition`` micro-condition, has ``image_condition_channels`` and a
    packing method, and some frame is given; else ``{}`` (no frame given: the model's own zeros,
    text-to-video unchanged)."""
    pack = getattr(model, "pack_image_condition", None)
    if (given_mask is None or pack is None or not getattr(model, "image_condition_channels", 0)
            or "image_condition" not in getattr(model, "micro_conditions", ()) or not bool(given_mask.any())):
        return {}
    return {"image_condition": pack(latents, given_mask)}


def fixed_position_settings(model: object) -> dict[str, Any]:
    """``{name: value}`` of the settings ``model`` declares in ``fixed_position_settings``
    (dotted names read through submodules; a model that declares none gives ``{}``)."""
    names = getattr(model, "fixed_position_settings", ())
    return {name: reduce(getattr, name.split("."), model) for name in names}
