"""Lightning callbacks that turn on lvdm's distributed features from a recipe.

They apply what the model declares (``sequence_parallel_plan``, ``block_class``) at ``setup``
— after the process group exists, before the strategy wraps the model and before any
dataloader is built — so they compose with any strategy (DDP, DeepSpeed ZeRO, FSDP).
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any, Optional

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lvdm.distributed.activation_checkpointing import remove_activation_checkpointing
from lvdm.distributed.parallelize import parallelize
from lvdm.distributed.plan import remove_sequence_split
from lvdm.distributed.ranks import data_parallel_rank_world, seed_data_parallel_replica, seed_training_batch
from lvdm.distributed.sequence_parallel import Mode, SequenceParallelGroup, new_sequence_parallel_group
from lvdm.ops.attention import set_sequence_parallel

__all__ = ["SequenceParallel", "ActivationCheckpointing", "data_parallel_rank_world", "seed_data_parallel_replica",
           "seed_training_batch"]


def _fingerprint(batch) -> str:
    """A digest that differs (almost surely) when two batches or random states differ."""
    digest = hashlib.sha256(torch.random.get_rng_state().numpy().tobytes())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        digest.update(torch.cuda.get_rng_state().numpy().tobytes())

    def visit(x) -> None:
        if isinstance(x, torch.Tensor):
            digest.update(str((x.dtype, tuple(x.shape))).encode())
            digest.update(x.detach().float().cpu().numpy().tobytes())
        elif isinstance(x, str):
            digest.update(x.encode())
        elif isinstance(x, dict):
            for key in sorted(x):
                digest.update(str(key).encode())
                visit(x[key])
        elif isinstance(x, (list, tuple)):
            for item in x:
                visit(item)

    visit(batch)
    return digest.hexdigest()


class SequenceParallel(Callback):
    """Split every sequence across groups of ``size`` ranks (Ulysses or ring attention).

    Composes with any data-parallel strategy (DDP, DeepSpeed ZeRO, FSDP): the world of
    ``N`` ranks becomes ``N / size`` data-parallel replicas of ``size`` ranks each (consecutive
    global ranks), and gradients are averaged over all ``N`` ranks as those strategies do.

    At ``setup`` (after the process group exists, before the model is wrapped and before any
    dataloader is built) it builds the groups, reseeds the random generators with ``seed +
    data-parallel rank`` (``seed``: the recipe's ``seed_everything``, else one drawn on rank 0),
    so the ranks of a group draw the same caption dropout, timesteps and noise, and makes lvdm's
    data modules split data by data-parallel rank (:func:`data_parallel_rank_world`). On the
    first training batch it checks that the ranks of each group really hold the same batch and
    random state, and fails with an error saying so if not.

    Sequence parallelism is switched on only while the trainer runs a training step (forward
    and backward), validation, test or predict step on all ranks together; anything a single
    rank runs (e.g. sample previews on rank 0) uses ordinary local attention.

    The model must declare where its sequence may be split (its ``sequence_parallel_plan``,
    :mod:`lvdm.models.contract`; DiT and STDiT do);
    the number of patch frames must divide by ``size`` (and, for Ulysses, the head count).

    Args:
        size: ranks that share one sequence (1 turns sequence parallelism off).
        mode: ``ulysses`` (all-to-all over attention heads; needs ``num_heads % size == 0``;
            the faster choice) or ``ring`` (K/V passed round the ranks; any head count).
    """

    def __init__(self, size: int = 2, mode: Mode = "ulysses"):
        if size < 1:
            raise ValueError(f"sequence-parallel size must be >= 1, got {size}")
        if mode not in ("ulysses", "ring"):
            raise ValueError(f"sequence-parallel mode must be 'ulysses' or 'ring', got {mode!r}")
        self.size = size
        self.mode = mode
        self.group: Optional[SequenceParallelGroup] = None
        self._checked = False

    @property
    def sequence_parallel_size(self) -> int:
        """Ranks that share each sequence (what :func:`data_parallel_rank_world` reads)."""
        return self.size

    # ---------------------------------------------------------------- setup / teardown
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.size == 1 or self.group is not None:
            return
        if trainer.world_size % self.size:
            raise ValueError(f"SequenceParallel(size={self.size}) needs a world size divisible by {self.size}; "
                             f"the trainer has {trainer.world_size} process(es) (devices × nodes)")
        parallelize(pl_module, sp=self.size, sp_mode=self.mode)
        self.group = new_sequence_parallel_group(self.size, self.mode)
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is None:  # no seed_everything: agree on one so the group's ranks match
            box = [random.SystemRandom().randrange(2**31) if trainer.global_rank == 0 else 0]
            dist.broadcast_object_list(box, src=0)
            seed = box[0]
        seed_data_parallel_replica(trainer, int(seed))
        _, dp_world = data_parallel_rank_world(trainer)
        rank_zero_info(f"sequence parallelism: {dp_world} data-parallel replica(s) × {self.size} ranks "
                       f"({self.mode}); random generators seeded with {seed} + data-parallel rank")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        set_sequence_parallel(None)
        remove_sequence_split(pl_module)

    # ---------------------------------------------------------------- on only inside steps
    def _on(self) -> None:
        if self.group is not None:
            set_sequence_parallel(self.group)

    def _off(self, *args, **kwargs) -> None:
        set_sequence_parallel(None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.group is not None and not self._checked:
            self._check_same_batch(batch)
            self._checked = True
        self._on()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._on()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._on()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._on()

    # backward (and activation-checkpoint recomputation in it) still needs the group; it ends
    # before on_after_backward
    on_after_backward = _off
    on_train_batch_end = _off
    on_validation_batch_end = _off
    on_test_batch_end = _off
    on_predict_batch_end = _off
    on_exception = _off

    def _check_same_batch(self, batch) -> None:
        everyone: list = [None] * self.size
        dist.all_gather_object(everyone, _fingerprint(batch), group=self.group.group)
        if len(set(everyone)) > 1:
            raise RuntimeError(
                "SequenceParallel: the ranks of one sequence-parallel group got different batches or "
                "random states; they must see the same data. lvdm's data modules split data by "
                "data-parallel rank (lvdm.distributed.ranks.data_parallel_rank_world); a custom data module "
                "or a sampler Lightning inserted must do the same (use_distributed_sampler=False)"
            )


class ActivationCheckpointing(Callback):
    """Recompute the activations of the first ``ceil(fraction · depth)`` transformer blocks in
    backward instead of storing them (Open-Sora's ``ckpt_ratio``).

    Trades about one extra forward pass of the chosen blocks for their activation memory;
    works with any strategy (DDP, DeepSpeed ZeRO, FSDP) and with
    :class:`~lvdm.training.callbacks.parallel.SequenceParallel`. Parameter names and checkpoints are unchanged.
    Applied at ``setup``, before the strategy wraps the model.

    Args:
        fraction: share of the blocks to checkpoint, counted from the first block (1: all).
        offload: also move the input each checkpointed block keeps for its recomputation to
            (pinned) host memory and back before the block is recomputed (``save_on_cpu``); frees
            ``tokens · hidden`` values per checkpointed block on the GPU for one copy each way.
    """

    def __init__(self, fraction: float = 1.0, offload: bool = False):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"activation checkpointing fraction must be in [0, 1], got {fraction}")
        if offload and fraction == 0:
            raise ValueError("ActivationCheckpointing(offload=True) offloads the inputs of checkpointed blocks: "
                             "it needs fraction > 0")
        self.fraction = fraction
        self.offload = offload

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        parallelize(pl_module, ac=self.fraction, ac_offload=self.offload)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        remove_activation_checkpointing(pl_module)


class CompileBlocks(Callback):
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

