"""Predicted memory of a fine-tune on one GPU (LoRA, FP8 base, block swap, 8-bit optimizer): pure torch.

:func:`prepare_finetune` does to a backbone what a run does, in the run's order: the
:class:`~lvdm.training.callbacks.lora_training.LoRA` callback's adapters (:func:`apply_lora`)
and FP8 base (:func:`store_frozen_fp8`), then the cast of the whole module to the training
dtype (Lightning's ``bf16-true`` precision: ``bf16``; ``bf16-mixed`` keeps ``fp32`` weights).
On a ``meta`` backbone (``lvdm estimate``) that costs no memory and gives the exact tensors
of the real run; :func:`state_bytes` then counts, in bytes:

* ``frozen``: the frozen base by dtype (an FP8 base: ``float8_e4m3fn`` weights, ``float32``
  scales, the rest in the training dtype), less the blocks block swap keeps on the host;
* ``buffers``: the module's buffers (position tables, null captions);
* ``trainable``: what trains (the adapters; every parameter in a full fine-tune);
* ``grads``: one gradient per trainable parameter, in its dtype;
* ``optimizer``: ``adamw`` (``torch.optim.AdamW``): two moments in the parameter's dtype and a
  float32 ``step`` per tensor; ``adamw8bit`` (:class:`lvdm.finetune.optim8bit.AdamW8bit`,
  bitsandbytes' blockwise 8-bit Adam): per tensor of at least 4096 values two ``uint8`` states
  and two float32 ``absmax`` per 256 values, plus the two 256-entry float32 quantisation maps
  every tensor shares; a smaller tensor keeps two float32 states (bitsandbytes' ``min_8bit_size``);
* ``host_swapped``: the frozen parameters of the ``block_swap`` blocks, in host memory;
* ``swap_window``: what of those is on the GPU at once: the largest three (block swap holds
  the running block, the next one prefetched and one of backward slack);

and :func:`fp8_dequantized_bytes` the bf16 copies of an FP8 base's weights that the backward
keeps: ``F.linear`` saves its weight when its input needs a gradient, so a block run without
activation checkpointing keeps the dequantised copy of every such FP8 weight until its
backward (the FP8 saving is gone at the peak); a checkpointed block makes them again one
block at a time.

:func:`peak_bytes` adds the activations (``lvdm.perf.estimate.MemoryModel``'s rule) and the
dequantised FP8 weights the backward holds. Block swap
lowers the device peak only when every block is activation-checkpointed: otherwise the
autograd graph of a block keeps its device weights until its backward, so the swapped bytes
count as resident. ``tests/finetune/test_memory.py`` compares every state count with the tensors of a
real run (exact), ``benchmarks/bench_lowmem.py`` the total with a measured peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, Optional

import torch
from torch import nn

from lvdm.distributed.activation_checkpointing import declared_blocks
from lvdm.finetune.block_swap import swap_blocks
from lvdm.finetune.fp8 import Fp8Linear, store_frozen_fp8
from lvdm.finetune.lora import apply_lora

OptimizerName = Literal["adamw", "adamw8bit"]
WeightsDtype = Literal["bf16", "fp32"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
BNB_BLOCK, BNB_MIN_8BIT, BNB_QMAP_VALUES = 256, 4096, 256
SWAP_WINDOW = 3


def prepare_finetune(model: nn.Module, rank: int = 0, alpha: Optional[float] = None,
                     targets: str | Sequence[str] | None = None, fp8_base: bool = False,
                     weights_dtype: WeightsDtype = "bf16") -> nn.Module:
    """``model`` (in place) as a fine-tune trains it: LoRA of ``rank`` on ``targets`` (0: a full
    fine-tune, every parameter trains), the frozen block linears in FP8 with ``fp8_base``, then
    cast to ``weights_dtype``."""
    if weights_dtype not in DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(DTYPES)}, got {weights_dtype!r}")
    if rank:
        apply_lora(model, rank, alpha, targets=targets)
    elif fp8_base:
        raise ValueError("fp8_base stores a frozen base: it needs LoRA (a rank > 0); a full fine-tune trains every weight")
    if fp8_base:
        store_frozen_fp8(model)
    return model.to(DTYPES[weights_dtype])


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of ``tensors``, each tensor object counted once."""
    unique = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())


def optimizer_state_bytes(params: Sequence[torch.Tensor], optimizer: OptimizerName = "adamw") -> int:
    """Bytes of the optimizer states of ``params`` once every one has taken a step (see the module docstring)."""
    if optimizer == "adamw":
        return sum(2 * p.numel() * p.element_size() + 4 for p in params)
    if optimizer != "adamw8bit":
        raise ValueError(f"optimizer must be 'adamw' or 'adamw8bit', got {optimizer!r}")
    total, quantized = 0, False
    for p in params:
        n = p.numel()
        if n < BNB_MIN_8BIT:
            total += 2 * 4 * n
        else:
            total += 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCK)
            quantized = True
    return total + (2 * 4 * BNB_QMAP_VALUES if quantized else 0)


def state_bytes(model: nn.Module, optimizer: OptimizerName = "adamw", block_swap: int = 0) -> dict:
    """Parameter, gradient, optimizer and host bytes of a prepared ``model`` (module docstring);
    also ``trainable_params`` and ``params`` (counts)."""
    blocks = swap_blocks(model, block_swap)
    per_block = [_bytes(p for p in block.parameters() if not p.requires_grad) for block in blocks]
    swapped = {id(p) for block in blocks for p in block.parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen: dict[str, int] = {}
    for p in model.parameters():
        if not p.requires_grad and id(p) not in swapped:
            key = str(p.dtype).removeprefix("torch.")
            frozen[key] = frozen.get(key, 0) + p.numel() * p.element_size()
    return {
        "frozen": frozen,
        "buffers": _bytes(model.buffers()),
        "trainable": _bytes(trainable),
        "grads": _bytes(trainable),
        "optimizer": optimizer_state_bytes(trainable, optimizer),
        "host_swapped": sum(per_block),
        "swap_window": sum(sorted(per_block, reverse=True)[:SWAP_WINDOW]),
        "trainable_params": sum(p.numel() for p in trainable),
        "params": sum(p.numel() for p in model.parameters()),
    }


def fp8_dequantized_bytes(model: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int]:
    """``(all, the largest block's)`` bytes of the bf16 weight copies the backward keeps from
    one forward of ``model(*args, **kwargs)`` (``meta`` tensors serve): two bytes a value of every
    call of an :class:`~lvdm.finetune.fp8.Fp8Linear` whose input needs a gradient."""
    blocks = declared_blocks(model)
    owner = {id(m): i for i, block in enumerate(blocks) for m in block.modules()}
    counts = [0] * (len(blocks) + 1)  # the last: outside the blocks

    def saved(module, inputs, output):
        if inputs[0].requires_grad:
            counts[owner.get(id(module), -1)] += 2 * module.weight.numel()

    handles = [m.register_forward_hook(saved) for m in model.modules() if isinstance(m, Fp8Linear)]
    try:
        with torch.enable_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(counts), max(counts[:-1], default=0)


def peak_bytes(states: dict, activations: float, checkpoint_fraction: float = 0.0,
               fp8_dequantized: tuple[int, int] = (0, 0)) -> dict[str, float]:
    """The device peak of a fine-tune: the :func:`state_bytes` ``states`` on the GPU plus
    ``activations`` bytes and the :func:`fp8_dequantized_bytes` copies; the swapped blocks count
    by their window, and the FP8 copies by one block, only when every block is checkpointed
    (module docstring). Returns the parts and their ``total``."""
    swapped = states["swap_window"] if checkpoint_fraction >= 1 else states["host_swapped"]
    dequantized = fp8_dequantized[1] if checkpoint_fraction >= 1 else fp8_dequantized[0]
    parts = {"frozen": float(sum(states["frozen"].values())), "buffers": float(states["buffers"]),
             "swapped_on_device": float(swapped), "trainable": float(states["trainable"]),
             "grads": float(states["grads"]), "optimizer": float(states["optimizer"]),
             "fp8_dequantized": float(dequantized), "activations": float(activations)}
    return {**parts, "total": sum(parts.values())}
