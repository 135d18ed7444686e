"""One entry point that applies lvdm's parallelism to a backbone, in one stated order.

Like torchtitan's ``parallelize_llama``, the order is fixed here, next to the reasons, and
every step reads only what the backbone declares (:mod:`lvdm.models.contract`): its
``sequence_parallel_plan`` and its ``block_class``. No step looks at a class name.

1. **Sequence parallelism** first: forward pre-hooks on the blocks cut the tokens (and the
   per-frame inputs) and a hook on the gather module joins the output. The hooks run in
   ``Module.__call__``, *outside* the block's ``forward``, so the next two steps, which both
   wrap that ``forward``, see the local chunk and never re-run a cut.
2. **Activation checkpointing** second: it replaces each chosen block's ``forward`` with a
   non-reentrant ``torch.utils.checkpoint`` of it; the recomputation in backward repeats the
   block's attention collectives (every rank of the group runs the same backward).
3. **Compile** last, per block (torchtitan's recipe): ``torch.compile`` of the block's call
   traces the checkpointed ``forward`` as one region, so compile sees what actually runs;
   compiling first would capture a ``forward`` that checkpointing then replaces.

Data-parallel wrapping (DDP, DeepSpeed ZeRO, FSDP) comes after all three and belongs to the
Lightning strategy; none of the steps changes parameter names or the module tree, so
checkpoints and strategies see the model as built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from lvdm.distributed.activation_checkpointing import apply_activation_checkpointing
from lvdm.distributed.plan import apply_sequence_split, check_sequence_split, planned_modules

__all__ = ["Parallelized", "parallelize"]


@dataclass
class Parallelized:
    """What :func:`parallelize` applied: the modules whose sequence is split, the
    checkpointed blocks and the number of compiled blocks."""

    split: list[nn.Module] = field(default_factory=list)
    checkpointed: list[nn.Module] = field(default_factory=list)
    compiled: int = 0


def parallelize(
    model: nn.Module,
    sp: int = 1,
    sp_mode: str = "ulysses",
    ac: float = 0.0,
    ac_offload: bool = False,
    compile: Optional[dict[str, Any]] = None,
) -> Parallelized:
    """Apply sequence parallelism, activation checkpointing and compile to ``model`` (a
    backbone, or a module holding one), in that order (see the module docstring for why).

    Args:
        model: the backbone or a module (e.g. the LightningModule) that contains it.
        sp: sequence-parallel group size; > 1 checks the declared plan against ``sp`` and
            ``sp_mode`` and hooks the split in (the group itself is turned on per step by
            :class:`lvdm.training.callbacks.parallel.SequenceParallel`, or ``lvdm.ops.attention.sequence_parallel``).
        sp_mode: ``ulysses`` or ``ring``.
        ac: share of the ``block_class`` units to checkpoint, from the first (0: none).
        ac_offload: move the inputs the checkpointed blocks keep to host memory
            (:mod:`lvdm.distributed.activation_checkpointing`); needs ``ac > 0``.
        compile: keyword arguments of :func:`lvdm.distributed.compile.compile_blocks` (``mode``,
            ``fullgraph``, ``dynamic``, ``backend``); None: no compile.

    Returns:
        a :class:`Parallelized` record of what was applied.
    """
    if ac_offload and not ac > 0:
        raise ValueError(f"parallelize(ac_offload=True) offloads the inputs of checkpointed blocks: it needs ac > 0, got ac={ac}")
    done = Parallelized()
    if sp > 1:  # 1. sequence parallelism: hooks around the blocks
        planned = planned_modules(model)
        if not planned:
            raise ValueError(f"parallelize(sp={sp}): no module of {type(model).__name__} declares a "
                             "`sequence_parallel_plan` (lvdm.models.contract), so there is nowhere to split")
        for module in planned:
            check_sequence_split(module, sp, sp_mode)
        done.split = apply_sequence_split(model)
    if ac > 0:  # 2. activation checkpointing: wraps each chosen block's forward
        done.checkpointed = apply_activation_checkpointing(model, ac, offload=ac_offload)
    if compile is not None:  # 3. compile each block's call, checkpointed forward included
        from lvdm.distributed.compile import compile_blocks  # perf imports Lightning: only when compiling

        done.compiled = compile_blocks(model, **compile)
    return done
