"""DeepSpeed on CPU processes, for tests and dry runs without a GPU.

Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA, yet DeepSpeed runs on CPU
with its CPU accelerator (``DS_ACCELERATOR=cpu``) over gloo. This subclass lifts only that
refusal, so the real ZeRO code paths (partitioning, gathering, sharded checkpoints) run on a
laptop or in CI:

    lvdm fit --config recipes/tiny/adaln.yaml --config strategies/zero3.yaml \\
        --trainer.strategy.class_path lvdm.distributed.cpu_deepspeed.CPUDeepSpeedStrategy \\
        --trainer.accelerator cpu --trainer.devices 2

It lives in the package (not under ``tests/``) so that a command line can name it by
``class_path`` and the worker processes Lightning launches can import it without any
``sys.path`` set-up. It is for correctness checks, not for speed.

(FSDP has no CPU counterpart: torch's ``FullyShardedDataParallel`` itself refuses to run
without an accelerator device.)
"""

from __future__ import annotations

import os

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


def _use_deepspeed_cpu_accelerator() -> None:
    """Make DeepSpeed pick its CPU accelerator, in this process and the ones it launches."""
    chosen = os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if chosen != "cpu":
        raise RuntimeError(f"CPUDeepSpeedStrategy needs DS_ACCELERATOR=cpu, but the environment sets DS_ACCELERATOR={chosen!r}")
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name != "cpu":
        raise RuntimeError(
            f"DeepSpeed already chose its {name!r} accelerator in this process; set DS_ACCELERATOR=cpu "
            "in the environment before anything imports deepspeed"
        )


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` on CPU processes (gloo): ZeRO stages 1-3, sharded checkpoints.

    Takes every argument of Lightning's ``DeepSpeedStrategy`` (``stage``, ``offload_optimizer``,
    ``config``, ``precision_plugin``…). Use ``--trainer.accelerator cpu``. The strategy
    fragments' bf16 (with autocast) runs on CPU too; float32 makes results exact.
    """

    strategy_name = "deepspeed_cpu"

    def __init__(self, **kwargs):
        _use_deepspeed_cpu_accelerator()
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(**kwargs)

    @property
    def root_device(self) -> torch.device:
        # DeepSpeed reads the local rank from the device index, which CPU devices lack
        # (tensors moved to "cpu:1" simply land on the CPU).
        return torch.device("cpu", self.local_rank)

    def setup_environment(self) -> None:
        # DeepSpeedStrategy.setup_environment only adds the CUDA check; skip to DDP's.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # As DeepSpeedStrategy's, less the check that device indices equal local ranks (CPU
        # devices have no index).
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()
