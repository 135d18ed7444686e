"""A frozen base stored in FP8: pure torch, no Lightning.

:func:`store_frozen_fp8` replaces each frozen ``nn.Linear`` inside the backbone's blocks (the
contract's ``block_class`` units, where nearly all the weights are; every parameter
``requires_grad`` False, e.g. the ``base_layer`` peft's LoRA layer wraps after
:func:`lvdm.finetune.lora.apply_lora`) by an :class:`Fp8Linear`: the weight as
``float8_e4m3fn`` (1 byte a value) with one float32 scale per tensor (``amax / 448``, 448 the
largest e4m3 value), dequantised on the fly in ``forward`` to the input's dtype (bf16 under
bf16 training) and used by an ordinary ``F.linear``; the bias stays as it was. The embedders and the final layer stay as they are (by
default; glob ``targets`` name any frozen linear): backbones read their dtype from the
timestep embedder's weight to cast its input, an FP8 input that :class:`Fp8Linear` refuses. The stored base
takes about half the bytes of bf16 (``tests/finetune/test_fp8_block_swap.py``,
``benchmarks/bench_fp8_base.py``).

What a checkpoint holds: an :class:`Fp8Linear` ``blocks.0.mlp.fc1.base_layer`` has the state
keys ``weight`` (``float8_e4m3fn`` ``[out, in]``), ``weight_scale`` (float32 scalar) and
``bias``. Loading a state dict into it takes either that pair (copied exactly) or a floating
``weight`` alone (a bf16 / float32 checkpoint: quantised on load). The LoRA callback's
checkpoints hold the adapter only, so none of this is saved there: a resumed run rebuilds the
base from its ``InitFrom`` source and stores it in FP8 again. ``module.to(torch.bfloat16)``
(Lightning's ``bf16-true`` precision) casts the bias, never the FP8 weight or its scale.
Merging an adapter into an FP8 base fails in peft's merge (torch has no FP8 arithmetic): merge
into the full-precision base (``lvdm lora merge`` rebuilds it from the checkpoint's source).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lvdm.distributed.activation_checkpointing import declared_blocks
from lvdm.finetune.lora import _available

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448


@torch.no_grad()
def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fp8, scale)`` with ``fp8 * scale ≈ weight``: one float32 scale per tensor, ``amax / 448``."""
    amax = weight.detach().abs().max().float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8Linear(nn.Module):
    """A frozen linear layer whose weight is stored in FP8 with a per-tensor float32 scale.

    Args:
        linear: the frozen ``nn.Linear`` to take the weight and bias from.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_fp8(linear.weight)
        self.weight = nn.Parameter(weight, requires_grad=False)  # frozen parameters, not buffers: DDP broadcasts
        self.weight_scale = nn.Parameter(scale, requires_grad=False)  # buffers every step, frozen parameters never
        self.bias = linear.bias

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in ``dtype`` (``fp8 · scale``, computed in ``dtype``)."""
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == FP8_DTYPE:
            raise TypeError(f"an FP8-stored linear ({self.extra_repr()}) got an FP8 input: its caller casts the input "
                            "to the layer's weight dtype; leave that layer out of the fp8 targets")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def _apply(self, fn, recurse=True):
        # moves keep the storage: .to(dtype) / .half() cast the bias only, never the FP8 weight or its scale
        stored = {key: self._parameters.pop(key) for key in ("weight", "weight_scale")}
        try:
            return super()._apply(fn, recurse)
        finally:
            device = fn(stored["weight_scale"].data).device
            for key, param in stored.items():
                param.data = param.data.to(device)
                self._parameters[key] = param

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.dtype != FP8_DTYPE:  # a full-precision checkpoint: quantise it
            state_dict = dict(state_dict)
            state_dict[prefix + "weight"], state_dict[prefix + "weight_scale"] = quantize_fp8(weight)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def _frozen_linears(model: nn.Module, targets: str | Sequence[str] | None) -> dict[str, nn.Linear]:
    """The linears to store in FP8 by module name; patterns match names with peft's ``.base_layer`` left out."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}
    frozen = {name: m for name, m in linears.items() if not any(p.requires_grad for p in m.parameters())}
    if targets is None:
        inside = {id(m) for block in declared_blocks(model) for m in block.modules()}
        return {name: m for name, m in frozen.items() if id(m) in inside}
    patterns = [targets] if isinstance(targets, str) else list(targets)
    shown = {name.removesuffix(".base_layer"): name for name in linears}
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(s, p) for s in shown)]
    if unmatched or not patterns:
        raise ValueError(f"fp8 targets {unmatched or patterns} match no nn.Linear of {type(model).__name__}; "
                         f"available: {_available(list(shown))}")
    chosen = [name for s, name in shown.items() if any(fnmatch.fnmatchcase(s, p) for p in patterns)]
    training = [name for name in chosen if name not in frozen]
    if training:
        raise ValueError(f"fp8 storage is for frozen linears only; {_available(training, 4)} train(s) "
                         f"(requires_grad): freeze them first or leave them out of the fp8 targets")
    return {name: frozen[name] for name in chosen}


def store_frozen_fp8(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    """Replace frozen ``nn.Linear`` modules of ``model`` (in place) by :class:`Fp8Linear`; return their names.

    Args:
        model: a model whose base is frozen (e.g. after :func:`lvdm.finetune.lora.apply_lora`).
        targets: None: every ``nn.Linear`` inside the declared blocks whose parameters are all
            frozen; or glob patterns over
            module names (``blocks.*.mlp.fc1`` names the base of an adapted layer too); a pattern
            that matches nothing, or a linear that trains, is an error.
    """
    chosen = _frozen_linears(model, targets)
    for name, linear in chosen.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Fp8Linear(linear))
    return list(chosen)


def stored_bytes(module: nn.Module) -> int:
    """The bytes of the parameters and buffers of ``module`` (what its stored weights take)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
