"""Once-per-optimizer-step triggers for callbacks that act every N steps."""

from __future__ import annotations


class EveryNSteps:
    """Says when a callback acting every ``every_n_steps`` optimizer steps is due.

    Lightning calls ``on_train_batch_end`` once per batch, and with gradient accumulation
    several batches end on the same ``global_step``: a step is only ever claimed once.

    Args:
        every_n_steps: the interval (0: never due; :meth:`claim` still works).
    """

    def __init__(self, every_n_steps: int):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0; got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.last_step = -1

    def claim(self, step: int) -> bool:
        """True the first time ``step`` is claimed, False after."""
        if step == self.last_step:
            return False
        self.last_step = step
        return True

    def due(self, step: int) -> bool:
        """True once for each positive multiple of ``every_n_steps``."""
        return self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and self.claim(step)
