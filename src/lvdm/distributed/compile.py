"""``torch.compile`` applied per transformer block (torchtitan's recipe): each block compiles
once and the graph is reused for every block of the same shapes, so compile time does not
grow with depth and graph breaks elsewhere in the model cost nothing."""

from __future__ import annotations

from typing import Optional

from torch import nn

from lvdm.distributed.activation_checkpointing import declared_blocks


def compile_blocks(
    model: nn.Module,
    block_class: Optional[type] = None,
    mode: Optional[str] = None,
    fullgraph: bool = False,
    dynamic: Optional[bool] = False,
    backend: str = "inductor",
) -> int:
    """Compile every ``block_class`` submodule of ``model`` in place (``nn.Module.compile``).

    Args:
        model: the model, or a module holding it (an lvdm backbone declares ``block_class``,
            :mod:`lvdm.models.contract`; others pass it).
        block_class: the block type (default: the ``block_class`` the model's modules declare).
        mode: ``torch.compile`` mode (``None``, ``"max-autotune"``, ``"reduce-overhead"``…).
        fullgraph: require each block to compile to one graph.
        dynamic: let shapes vary without recompiling (False: specialise, fastest).
        backend: ``torch.compile`` backend (``inductor``; ``eager`` to test the wiring).

    Returns:
        the number of blocks compiled.
    """
    if block_class is None:
        blocks = declared_blocks(model)
    else:
        blocks = [m for m in model.modules() if isinstance(m, block_class)]
        if not blocks:
            raise ValueError(f"{type(model).__name__} has no {block_class.__name__} submodules to compile")
    for module in blocks:
        module.compile(mode=mode, fullgraph=fullgraph, dynamic=dynamic, backend=backend)
    return len(blocks)
