"""A progress bar whose epoch counter is right for step-bounded runs over streamed data."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


def epoch_description(current_epoch: int, max_epochs: int | None, max_steps: int) -> str:
    """``Epoch 3/9`` when the run is bounded by epochs, ``Epoch 3 · stops at step 300`` when it is
    bounded by steps (streamed data: an "epoch" is only ``samples_per_epoch`` samples, and
    Lightning's ``max_epochs`` is then -1, which its bar shows as ``Epoch 0/-2``), plain
    ``Epoch 3`` when neither bound applies or the count already passed the bound (a resumed run
    whose recipe changed)."""
    text = f"Epoch {current_epoch}"
    if max_steps is not None and max_steps >= 0:
        return f"{text} · stops at step {max_steps}"
    if max_epochs is not None and 0 <= current_epoch < max_epochs:
        return f"{text}/{max_epochs - 1}"
    return text


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar with :func:`epoch_description` as its training title.

    ``lvdm fit`` uses it unless a recipe names its own progress bar."""

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's only hook for the title; the padding keeps the bar from flickering when
        # the validation title is longer, as Lightning's own does.
        text = epoch_description(current_epoch, self.trainer.max_epochs, self.trainer.max_steps)
        return f"{text:{len(self.validation_description)}}"
