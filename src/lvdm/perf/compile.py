"""``torch.compile`` applied per transformer block (torchtitan's recipe): each block compiles
once and the graph is reused for every block of the same shapes, so compile time does not
grow with depth and graph breaks elsewhere in the model cost nothing."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from torch import nn


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
        model: the model (an lvdm ``DiT`` declares ``block_class``; others pass it).
        block_class: the block type (default ``model.block_class``).
        mode: ``torch.compile`` mode (``None``, ``"max-autotune"``, ``"reduce-overhead"``…).
        fullgraph: require each block to compile to one graph.
        dynamic: let shapes vary without recompiling (False: specialise, fastest).
        backend: ``torch.compile`` backend (``inductor``; ``eager`` to test the wiring).

    Returns:
        the number of blocks compiled.
    """
    block_class = block_class or getattr(model, "block_class", None)
    if block_class is None:
        raise ValueError(f"{type(model).__name__} declares no block_class: pass block_class=")
    count = 0
    for module in model.modules():
        if isinstance(module, block_class):
            module.compile(mode=mode, fullgraph=fullgraph, dynamic=dynamic, backend=backend)
            count += 1
    if count == 0:
        raise ValueError(f"{type(model).__name__} has no {block_class.__name__} submodules to compile")
    return count


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
        self.compiled = compile_blocks(
            denoiser, mode=self.mode, fullgraph=self.fullgraph, dynamic=self.dynamic, backend=self.backend
        )

