"""``torch.compile`` applied per transformer block (torchtitan's recipe): each block compiles
once and the graph is reused for every block of the same shapes, so compile time does not
grow with depth and graph breaks elsewhere in the model cost nothing."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from torch import nn

from lvdm.distributed.checkpointing import declared_blocks


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


class CompileBlocks(L.Callback):
    """Compile the denoiser's blocks before training (opt-in speed switch for recipes).

    Add to a recipe with ``--config callbacks/compile.yaml``. Lives apart from the module so
    that activation checkpointing, sharding and compile compose per block.

    Args:
        mode: ``torch.compile`` mode.
        fullgraph: require one graph per block.
        dynamic: allow varying shapes (bucketed video sizes) without recompiling.
        backend: ``torch.compile`` backend.
    """

    def __init__(
        self, mode: Optional[str] = None, fullgraph: bool = False, dynamic: Optional[bool] = None, backend: str = "inductor"
    ):
        super().__init__()
        self.mode, self.fullgraph, self.dynamic, self.backend = mode, fullgraph, dynamic, backend
        self.compiled = 0

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if self.compiled:
            return
        denoiser: Any = getattr(pl_module, "denoiser", None)
        if denoiser is None:
            raise ValueError("CompileBlocks needs a module with a `denoiser`")
        from lvdm.distributed.parallelize import parallelize  # the one place that orders SP → AC → compile

        options = dict(mode=self.mode, fullgraph=self.fullgraph, dynamic=self.dynamic, backend=self.backend)
        self.compiled = parallelize(denoiser, compile=options).compiled

