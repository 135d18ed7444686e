"""Distributed training applied from outside the models.

* :class:`SequenceParallel` — split each sequence across groups of ranks (Ulysses or ring
  attention); mechanism in :mod:`lvdm.distributed.sequence_parallel`.
* :class:`ActivationCheckpointing` — recompute a fraction of the transformer blocks in
  backward; mechanism in :mod:`lvdm.distributed.checkpointing`.

Both are Lightning callbacks (:mod:`lvdm.distributed.callbacks`), imported lazily here so that
the torch-only mechanisms load without Lightning. Both, and ``CompileBlocks``, go through
:func:`lvdm.distributed.parallelize.parallelize`, the one function that applies sequence
parallelism, activation checkpointing and compile, in that order, from what the backbone
declares (:mod:`lvdm.models.contract`).
"""

_CALLBACKS = ("SequenceParallel", "ActivationCheckpointing", "data_parallel_rank_world", "seed_data_parallel_replica",
              "seed_training_batch")

__all__ = list(_CALLBACKS)


def __getattr__(name: str):
    if name in _CALLBACKS:
        from lvdm.distributed import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'lvdm.distributed' has no attribute {name!r}")
