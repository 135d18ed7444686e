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
==========================================  ==============================================

:class:`~lvdm.models.dit.DiT` and :class:`~lvdm.models.stdit.STDiT` meet it;
``tests/models/test_backbone_battery.py`` runs one battery of checks on every backbone and
variant, so a new backbone is done when it is added to that battery's list and passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from lvdm.models.parallel_plan import SequenceSplit

__all__ = ["Backbone", "is_backbone"]


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
            ``"class_labels"``…); the module and samplers pass only these.
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
