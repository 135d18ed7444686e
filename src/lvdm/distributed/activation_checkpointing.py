"""Activation checkpointing per transformer block, for a chosen fraction of the blocks.

A checkpointed block keeps only its input during the forward pass and recomputes its
internals during backward: activation memory of those blocks drops from ``c · tokens ·
hidden`` per block to one ``tokens · hidden`` tensor, for about one extra forward pass of them
(~+33% compute at fraction 1). Open-Sora exposes the same knob as ``grad_checkpointing`` with a
``ckpt_ratio``.

Turn it on from a recipe with the :class:`lvdm.training.callbacks.parallel.ActivationCheckpointing` callback.
The model declares its unit (``block_class``, e.g. ``DiT.block_class = DiTBlock``); this module
wraps the *forward method* of the first ``ceil(fraction · depth)`` blocks in
``torch.utils.checkpoint`` (non-reentrant). No wrapper module is inserted, so parameter names,
``state_dict`` keys and checkpoints are unchanged, and strategies that hook into modules
(DDP, DeepSpeed ZeRO, FSDP) see the same module tree. Sequence-parallel collectives inside a
block are recomputed like any other op (every rank of the group runs the same backward).

With ``offload=True`` the inputs each checkpointed block keeps for its recomputation (its
tensor arguments: the token stream, and the per-sample or shared conditioning passed with
it) move to host memory during the forward and back before the block is recomputed
(:class:`HostOffload`, ``torch.autograd.graph.save_on_cpu``'s hooks, pinned on CUDA). The token
stream is the input that only the checkpoint held, so its ``tokens · D`` values per block leave
the device; a shared tensor every block reads (the text context) stays on the device anyway and
is copied to the host once per block. On the CPU the move is no copy; gradients are
bit-for-bit those without offload on every backbone of ``tests/models/test_backbone_battery.py``,
and ``tests/distributed/test_checkpointing.py`` counts what is packed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["apply_activation_checkpointing", "remove_activation_checkpointing", "checkpointed_blocks",
           "declared_blocks", "HostOffload"]


class HostOffload(torch.autograd.graph.save_on_cpu):
    """``torch.autograd.graph.save_on_cpu`` (pinned host memory when CUDA is there) that also
    counts what it packed: ``tensors`` and ``bytes`` (at their dtype), summed over its uses."""

    def __init__(self) -> None:
        super().__init__(pin_memory=torch.cuda.is_available())
        self.tensors, self.bytes = 0, 0
        move = self.pack_hook

        def pack(tensor: torch.Tensor):
            self.tensors += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return move(tensor)

        self.pack_hook = pack


class _CheckpointedForward:
    """Stands in for a block's ``forward``: runs the original under non-reentrant
    ``torch.utils.checkpoint`` when gradients are being recorded, directly otherwise; with an
    ``offload``, the inputs the checkpoint saves go to the host."""

    def __init__(self, forward, offload: HostOffload | None = None):
        self.forward = forward
        self.offload = offload

    def __call__(self, *args: Any, **kwargs: Any):
        if not torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        if self.offload is None:
            return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)
        # the checkpoint saves its positional inputs outside its own hooks, so these (the outer
        # ones) move them; keyword arguments it would hold in a closure, so they are passed
        # positionally too (diffusers' LTX blocks take their tokens by keyword). What the block
        # saves inside is the checkpoint's (dropped, recomputed).
        names = list(kwargs)

        def run(*values: Any):
            return self.forward(*values[: len(args)], **dict(zip(names, values[len(args):])))

        with self.offload:
            return checkpoint(run, *args, *kwargs.values(), use_reentrant=False)


def declared_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` in order: every submodule of a ``block_class`` that a module of
    ``model`` declares (the backbone contract's checkpoint and compile unit)."""
    classes = {m.block_class for m in model.modules() if isinstance(getattr(m, "block_class", None), type)}
    if not classes:
        raise ValueError(f"{type(model).__name__}: no block_class declared by any of its modules (the backbone "
                         "contract's checkpoint and compile unit, e.g. DiT.block_class)")
    return [m for m in model.modules() if isinstance(m, tuple(classes))]


def checkpointed_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` whose forward is currently checkpointed."""
    return [m for m in model.modules() if isinstance(m.__dict__.get("forward"), _CheckpointedForward)]


def apply_activation_checkpointing(model: nn.Module, fraction: float = 1.0, offload: bool = False) -> list[nn.Module]:
    """Checkpoint the first ``ceil(fraction · number of blocks)`` blocks of ``model``.

    Args:
        model: a model (or a LightningModule holding one) with a module that declares
            ``block_class``.
        fraction: share of the blocks to checkpoint, from the first; 0 turns it off, 1
            checkpoints every block.
        offload: move the inputs the checkpointed blocks keep to host memory (module docstring);
            each block's :class:`HostOffload` is ``block.forward.offload``.

    Returns:
        The checkpointed blocks (applying twice does not nest).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"activation checkpointing fraction must be in [0, 1], got {fraction}")
    blocks = declared_blocks(model)
    chosen = blocks[: math.ceil(fraction * len(blocks))]
    remove_activation_checkpointing(model)
    for block in chosen:
        block.forward = _CheckpointedForward(block.forward, HostOffload() if offload else None)
    return chosen


def remove_activation_checkpointing(model: nn.Module) -> None:
    """Undo :func:`apply_activation_checkpointing`."""
    for block in checkpointed_blocks(model):
        del block.forward  # the instance attribute; the class's forward shows through again
