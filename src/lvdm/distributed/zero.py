"""Whole-parameter access under DeepSpeed ZeRO, for callbacks that need full weights (EMA).

Under ZeRO-1/2 every rank holds the whole module in the training precision (e.g. bf16) while
the float32 master weights are split over the ranks inside the optimizer; under ZeRO-3 even
the module's parameters are split (``param.ds_numel`` elements in all, a shard per rank).
These helpers give whole float32 tensors in both cases, and plain ``param.float()``
everywhere else, so code that uses them needs no DeepSpeed-specific branches. Functions
that gather are collectives: every rank must call them, with the same parameters in the same
order.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


def is_deepspeed_parameter(param: torch.Tensor) -> bool:
    """True for a parameter managed by a DeepSpeed ZeRO optimizer (any stage)."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def is_partitioned(param: torch.Tensor) -> bool:
    """True for a ZeRO-3 parameter, whose full value lives only in shards across ranks."""
    return hasattr(param, "ds_id")


def full_fp32_parameters(named: Iterable[tuple[str, torch.nn.Parameter]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, whole float32 value)`` for each parameter, one at a time.

    For DeepSpeed parameters this is the optimizer's float32 master copy, gathered from all
    ranks (so an EMA under bf16 averages the exact weights, not their bf16 rounding); only one
    parameter is whole at a time, so ZeRO-3 never materialises the full model. A collective
    under DeepSpeed: consume the whole iterator on every rank.
    """
    for name, param in named:
        full = None
        if is_deepspeed_parameter(param):
            full = _deepspeed_full_fp32(param)
        yield name, (full if full is not None else param.detach().float())


def _deepspeed_full_fp32(param: torch.nn.Parameter) -> torch.Tensor | None:
    from deepspeed.utils import safe_get_full_fp32_param

    if is_partitioned(param) and not hasattr(param, "_z3_optimizer"):
        # ZeRO-3 without an optimizer (an inference engine): gather the module's own copy.
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            return param.detach().float().clone()
    full = safe_get_full_fp32_param(param)
    return None if full is None else full.detach().reshape(param.ds_shape if is_partitioned(param) else param.shape)


@contextlib.contextmanager
def writable(param: torch.nn.Parameter) -> Iterator[torch.nn.Parameter]:
    """Make ``param`` whole for reading and in-place writing; the write is kept on exit.

    Under ZeRO-3 the parameter is gathered on every rank and, on exit, rank 0's value is
    split back into the shards (all ranks must write the same value). Elsewhere a no-op.
    A collective under ZeRO-3: call it on every rank.
    """
    if not is_partitioned(param):
        yield param
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
        yield param
