"""Parallelism applied from outside the models, from what each backbone declares
(:mod:`lvdm.models.contract`): sequence parallelism (:mod:`~lvdm.distributed.sequence_parallel`,
:mod:`~lvdm.distributed.plan`), activation checkpointing
(:mod:`~lvdm.distributed.activation_checkpointing`), per-block compile
(:mod:`~lvdm.distributed.compile`), all three applied in one stated order by
:func:`lvdm.distributed.parallelize.parallelize`; DeepSpeed ZeRO and precision helpers; which
data a rank reads (:mod:`~lvdm.distributed.ranks`). The Lightning callbacks that switch these on
from a recipe live in :mod:`lvdm.training.callbacks.parallel`.
"""
