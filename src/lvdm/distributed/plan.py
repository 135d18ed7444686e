"""Apply a model's :class:`~lvdm.models.parallel_plan.SequenceSplit` with module hooks.

:func:`apply_sequence_split` registers, on every module that declares a
``sequence_parallel_plan``, a pre-hook on each of its blocks (the first cuts the tokens; all
of them get the local grid and cut the ``follow_split`` inputs) and a hook on the ``gather``
module's output. The hooks do nothing while sequence parallelism is off
(:func:`lvdm.ops.attention.sequence_parallel_size` is 1), so a model with the plan applied
runs unchanged on one device. :func:`check_sequence_split` holds every check of a model and a
group size in one place.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn

from lvdm.models.parallel_plan import SequenceSplit
from lvdm.ops.attention import gather_sequence, sequence_parallel_size, shard_sequence

__all__ = ["apply_sequence_split", "remove_sequence_split", "check_sequence_split", "planned_modules"]

_HANDLES = "_lvdm_sequence_split_handles"


def planned_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (itself included) that declare a ``sequence_parallel_plan``."""
    return [m for m in model.modules() if isinstance(getattr(m, "sequence_parallel_plan", None), SequenceSplit)]


def check_sequence_split(model: nn.Module, size: int, mode: Optional[str] = None,
                         grid: Optional[tuple[int, int, int]] = None) -> None:
    """Raise ``ValueError`` naming the reason when ``model`` cannot be split over ``size`` ranks:
    a setting its plan refuses, heads that do not divide (``mode="ulysses"``), or (given the
    ``grid`` of an input) a unit count that does not divide."""
    plan: SequenceSplit = model.sequence_parallel_plan
    for attribute, value, why in plan.unsupported:
        if getattr(model, attribute, None) == value:
            raise ValueError(f"sequence parallelism (size {size}) does not support {attribute}={value!r}: {why}")
    heads = getattr(model, "num_heads", None)
    if mode == "ulysses" and heads is not None and heads % size:
        raise ValueError(f"SequenceParallel(size={size}, mode='ulysses'): the model's {heads} attention heads "
                         f"do not divide by {size}; use mode='ring' (any head count) or a size that divides {heads}")
    if grid is not None and grid[0] % size:
        raise ValueError(
            f"sequence parallelism splits whole latent {plan.unit}s: the latent has {grid[0]} {plan.unit}s after "
            f"patching, not divisible by the sequence-parallel size {size}; use a length that gives a multiple "
            f"of {size}"
        )


def _block_hook(model: nn.Module, plan: SequenceSplit, block: nn.Module, first: bool):
    signature = inspect.signature(type(block).forward)

    def hook(module, args, kwargs):
        size = sequence_parallel_size()
        if size == 1:
            return None
        bound = signature.bind(module, *args, **kwargs)
        values = bound.arguments
        if first:
            units = values[plan.tokens].shape[plan.dim] if plan.grid is None else tuple(values[plan.grid])[0]
            check_sequence_split(model, size, grid=(units, 1, 1))
            values[plan.tokens] = shard_sequence(values[plan.tokens], plan.dim)
        _cut_followers(plan, values)
        if plan.grid is not None:
            grid = tuple(values[plan.grid])
            values[plan.grid] = (grid[0] // size, *grid[1:])
        return tuple(bound.args[1:]), dict(bound.kwargs)

    return hook


def _cut(value, plan: SequenceSplit, ndim: Optional[int]):
    """``value`` cut along ``plan.dim`` if it is a tensor of ``ndim`` dims (any if None) that
    runs over the units (length 1 broadcasts: per sample, kept whole); a tuple (position
    codes) has each of its entries cut."""
    if isinstance(value, tuple):
        cut = [_cut(v, plan, ndim) for v in value]
        return type(value)(*cut) if hasattr(value, "_fields") else tuple(cut)
    if isinstance(value, torch.Tensor) and (ndim is None or value.ndim == ndim) and value.shape[plan.dim] != 1:
        return shard_sequence(value, plan.dim)
    return value


def _cut_followers(plan: SequenceSplit, values: dict) -> None:
    """Cut the ``follow_split`` inputs (an ``(name, ndim)`` entry only when it has ``ndim`` dims)."""
    for entry in plan.follow_split:
        name, ndim = (entry, None) if isinstance(entry, str) else entry
        if name in values:
            values[name] = _cut(values[name], plan, ndim)


def _gather_pre_hook(module: nn.Module, plan: SequenceSplit):
    """The gather module runs on the local chunk too: its ``follow_split`` inputs are cut."""
    signature = inspect.signature(type(module).forward)

    def hook(module, args, kwargs):
        if sequence_parallel_size() == 1 or not plan.follow_split:
            return None
        bound = signature.bind(module, *args, **kwargs)
        _cut_followers(plan, bound.arguments)
        return tuple(bound.args[1:]), dict(bound.kwargs)

    return hook


def _gather_hook(plan: SequenceSplit):
    def hook(module, args, output: torch.Tensor):
        return gather_sequence(output, plan.dim) if sequence_parallel_size() > 1 else None

    return hook


def apply_sequence_split(model: nn.Module) -> list[nn.Module]:
    """Hook the declared split into every planned module of ``model``; returns those modules
    (applying twice does not hook twice). Raises ``ValueError`` when none declares a plan."""
    planned = planned_modules(model)
    if not planned:
        raise ValueError(f"{type(model).__name__} has no module declaring a `sequence_parallel_plan`, "
                         "so there is nowhere to split its sequence")
    remove_sequence_split(model)
    for module in planned:
        plan: SequenceSplit = module.sequence_parallel_plan
        if not plan.block_lists:  # a container (Wan 2.2's experts): its submodules' plans split
            continue
        blocks = [block for name in plan.block_lists for block in getattr(module, name, ())]
        handles = [block.register_forward_pre_hook(_block_hook(module, plan, block, i == 0), with_kwargs=True)
                   for i, block in enumerate(blocks)]
        gather = getattr(module, plan.gather)
        handles.append(gather.register_forward_pre_hook(_gather_pre_hook(gather, plan), with_kwargs=True))
        handles.append(gather.register_forward_hook(_gather_hook(plan)))
        setattr(module, _HANDLES, handles)
    return planned


def remove_sequence_split(model: nn.Module) -> None:
    """Undo :func:`apply_sequence_split`."""
    for module in model.modules():
        for handle in module.__dict__.pop(_HANDLES, []):
            handle.remove()
