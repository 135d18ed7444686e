"""Which slice of the data a process reads and which seed it draws with (no Lightning import:
``lvdm.data`` uses it)."""

from __future__ import annotations

import os
import random
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["data_parallel_rank_world", "seed_data_parallel_replica", "seed_training_batch"]


def data_parallel_rank_world(trainer: Optional[Any]) -> tuple[int, int]:
    """``(data-parallel rank, data-parallel world size)`` of this process: with a callback
    that splits sequences over ``P`` ranks (it says so with a ``sequence_parallel_size``
    attribute, as :class:`~lvdm.training.callbacks.parallel.SequenceParallel` does), ``(global_rank // P,
    world_size // P)`` (all ranks of one sequence-parallel group read the same data); else
    ``(global_rank, world_size)``; ``(0, 1)`` without a trainer."""
    if trainer is None:
        return 0, 1
    sizes = [getattr(c, "sequence_parallel_size", None) for c in getattr(trainer, "callbacks", ())]
    size = next((s for s in sizes if s is not None), 1)
    return trainer.global_rank // size, max(trainer.world_size // size, 1)


def _run_seed(seed: Optional[int]) -> Optional[int]:
    """``seed``, else the run's ``seed_everything`` value (``PL_GLOBAL_SEED``), else ``None``."""
    if seed is not None:
        return seed
    env = os.environ.get("PL_GLOBAL_SEED")
    return None if env is None else int(env)


def seed_data_parallel_replica(trainer: Any, seed: Optional[int] = None) -> Optional[int]:
    """Seed ``random``, numpy and torch with ``seed + data-parallel rank``.

    Lightning's ``seed_everything`` gives every rank the same seed, so without this every
    data-parallel replica would draw the same timesteps, noise and caption dropout for its
    (different) data; the ranks of one sequence-parallel group share a data-parallel rank and
    stay alike, as they must. ``seed`` defaults to the run's ``seed_everything`` value; with
    neither, nothing is reseeded (each process then keeps its own random seed). Returns the
    base seed used, or ``None``.
    """
    seed = _run_seed(seed)
    if seed is None:
        return None
    dp_rank, _ = data_parallel_rank_world(trainer)
    random.seed(seed + dp_rank)
    np.random.seed((seed + dp_rank) % 2**32)
    torch.manual_seed(seed + dp_rank)  # also seeds every CUDA device
    return seed


def seed_training_batch(trainer: Any, seed: Optional[int] = None) -> Optional[int]:
    """Seed torch (CPU and every CUDA device) for the next training batch from ``(seed,
    data-parallel rank, number of training batches before this one)``; returns the seed used.

    The noise, timesteps and caption dropout of a training step then depend on where the run
    is, not on what ran before in this process: a run resumed from a checkpoint draws exactly
    what the uninterrupted run drew, with nothing to save, and whatever the world size. The
    ranks of one sequence-parallel group share a data-parallel rank and so draw alike. ``seed``
    defaults to the run's ``seed_everything`` value; with neither, nothing is reseeded.
    """
    seed = _run_seed(seed)
    if seed is None:
        return None
    dp_rank, _ = data_parallel_rank_world(trainer)
    batch = trainer.fit_loop.epoch_loop.total_batch_idx  # restored from checkpoints by Lightning
    step_seed = int(np.random.SeedSequence([seed, dp_rank, batch]).generate_state(1, np.uint64)[0] >> 1)
    torch.manual_seed(step_seed)
    return step_seed
