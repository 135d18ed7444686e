"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for lvdm, on GPU and on CPU (gloo).

torch's first FSDP (``FullyShardedDataParallel``, Lightning's ``FSDPStrategy``) refuses to run
without an accelerator; FSDP2 shards each parameter as a ``DTensor`` over a device mesh and runs
on CPU processes too, frozen parameters included (a frozen base under LoRA). Lightning drives it
through ``ModelParallelStrategy``, which leaves the sharding to ``LightningModule.configure_model``:
:func:`shard_module` is what ``LatentDiffusionModule.configure_model`` applies, one unit per
backbone block (the contract's ``block_class``, as ``strategies/fsdp.yaml`` wraps them), then
each top-level part that holds parameters (the denoiser, a trainable text encoder), since
parameters outside every unit would train without their gradients being averaged.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, Optional, Union

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.constants import default_pg_timeout

from lvdm.distributed.activation_checkpointing import declared_blocks

__all__ = ["FSDP2Strategy", "data_parallel_mesh", "shard_module"]


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as plain FSDP2: every process one data-parallel rank
    (``data_parallel_size`` = the world size, tensor parallel 1), and by default one checkpoint
    file gathered on rank 0 (what ``lvdm sample`` and ``load_module`` read; with the ``LoRA``
    callback the adapter only).

    Args:
        data_parallel_size: the number of data-parallel ranks; ``auto``: every process.
        tensor_parallel_size: 1 (lvdm's backbones declare no tensor-parallel plan).
        save_distributed_checkpoint: True writes a ``torch.distributed.checkpoint`` folder of
            per-rank shards instead of one file.
        process_group_backend: ``nccl`` / ``gloo`` (None: the device's default).
        timeout: of the process group's collectives.
    """

    def __init__(self, data_parallel_size: Union[Literal["auto"], int] = "auto", tensor_parallel_size: int = 1,
                 save_distributed_checkpoint: bool = False, process_group_backend: Optional[str] = None,
                 timeout: Optional[timedelta] = default_pg_timeout):
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint, process_group_backend,
                         timeout)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # the parent's "auto" is one replica per node (tensor parallel inside)
            self._data_parallel_size = self.num_processes * self.num_nodes // int(self._tensor_parallel_size)
        super().setup_environment()


def shard_module(module: nn.Module, mesh: Any) -> list[nn.Module]:
    """Apply ``fully_shard`` over ``mesh`` to each declared block of ``module``, then to each of
    its top-level children that holds parameters; applying twice does nothing more.

    Args:
        module: the LightningModule (or any module whose backbone declares ``block_class``).
        mesh: the 1-D data-parallel device mesh.

    Returns:
        the sharded units, blocks first.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    blocks = declared_blocks(module)
    parts = [child for child in module.children() if any(True for _ in child.parameters())]
    units: list[nn.Module] = [*blocks, *parts]
    for unit in units:
        if not isinstance(unit, FSDPModule):
            fully_shard(unit, mesh=mesh)
    return units


def data_parallel_mesh(strategy: Union[ModelParallelStrategy, Any]) -> Any:
    """The data-parallel dimension of a ``ModelParallelStrategy``'s mesh; refuses tensor parallelism,
    which lvdm's backbones do not declare."""
    mesh = strategy.device_mesh
    if mesh["tensor_parallel"].size() != 1:
        raise ValueError(f"{type(strategy).__name__}: tensor_parallel_size {mesh['tensor_parallel'].size()} is not "
                         "supported (lvdm's backbones declare no tensor-parallel plan); use tensor_parallel_size 1")
    return mesh["data_parallel"]
