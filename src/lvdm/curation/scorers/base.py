"""The scorer plugin interface: what every ``lvdm data score`` scorer declares and does."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from lvdm.curation.frames import Clip, evenly_spaced

__all__ = ["Scorer"]


class Scorer:
    """A scorer adds fields to each sample's json.

    Subclasses set the class attributes and implement :meth:`score` (or :meth:`score_batch`
    when ``batchable``); the stage decodes, for each clip, the frames :meth:`frame_indices`
    asks for and nothing else. A scorer with a model loads it in :meth:`load`, which the stage
    calls before reading any sample (so a missing model fails the run at once, naming it) and
    again in each worker before its first sample (the model is not pickled to workers).

    Attributes:
        name: the scorer's name on the command line (``--scorers '[motion, ocr]'``).
        fields: the json fields it writes.
        batchable: whether :meth:`score_batch` runs several clips at once (a model forward).
        device: where it computes (``cpu``, ``cuda``...).
        num_frames: evenly spaced frames it looks at.
    """

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()
    batchable: ClassVar[bool] = False
    device: str = "cpu"
    num_frames: int = 4

    def load(self) -> None:
        """Load the models and files the scorer needs (idempotent; the default has none).

        Raises:
            FileNotFoundError: naming the missing local path or the hub id that cannot be had.
        """

    def frame_indices(self, total: int) -> list[int]:
        """Frame indices (of ``total``) this scorer needs decoded."""
        return evenly_spaced(total, self.num_frames)

    def frames(self, clip: Clip) -> list:
        """This scorer's frames of ``clip`` (those the clip really had), in order."""
        return [clip.frames[i] for i in self.frame_indices(clip.total) if i in clip.frames]

    def score(self, clip: Clip) -> dict[str, Any]:
        """The fields of one clip."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score nor score_batch")

    def score_batch(self, clips: Sequence[Clip]) -> list[dict[str, Any]]:
        """The fields of several clips (default: :meth:`score` on each)."""
        return [self.score(clip) for clip in clips]

    def finalize(self, keys: Sequence[str], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A pass over every sample's fields after scoring, in manifest order (e.g. finding
        duplicates across the dataset); the default keeps them."""
        return results
