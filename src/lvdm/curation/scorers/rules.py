"""Rules: resolution, duration, fps and aspect checks from the sample's probed metadata."""

from __future__ import annotations

from typing import Optional

from lvdm.curation.frames import Clip
from lvdm.curation.scorers.base import Scorer

__all__ = ["RulesScorer"]


class RulesScorer(Scorer):
    """Checks the metadata ingest probed (``width``, ``height``, ``duration``, ``fps``) against
    limits, decoding nothing. Writes ``rules_ok`` (bool) and ``rules_failed`` (the names of the
    failed checks, comma-separated; empty when all pass). A limit left ``None`` is not checked;
    images skip the duration and fps checks.

    Args:
        min_short_side: smallest accepted shorter side, pixels.
        min_duration: shortest accepted clip, seconds.
        max_duration: longest accepted clip, seconds.
        min_fps: lowest accepted frame rate.
        max_fps: highest accepted frame rate.
        min_aspect: smallest accepted width / height.
        max_aspect: largest accepted width / height.
    """

    name = "rules"
    fields = ("rules_ok", "rules_failed")
    num_frames = 0

    def __init__(
        self,
        min_short_side: Optional[int] = 256,
        min_duration: Optional[float] = 1.0,
        max_duration: Optional[float] = None,
        min_fps: Optional[float] = 10.0,
        max_fps: Optional[float] = None,
        min_aspect: Optional[float] = 0.25,
        max_aspect: Optional[float] = 4.0,
    ) -> None:
        self.limits = dict(min_short_side=min_short_side, min_duration=min_duration, max_duration=max_duration,
                           min_fps=min_fps, max_fps=max_fps, min_aspect=min_aspect, max_aspect=max_aspect)

    def frame_indices(self, total: int) -> list[int]:
        return []

    def score(self, clip: Clip) -> dict:
        meta = clip.meta
        width = meta.get("width") or clip.width
        height = meta.get("height") or clip.height
        values = {"short_side": min(width, height) if width and height else None,
                  "aspect": width / height if width and height else None}
        if clip.kind == "video":
            values["duration"], values["fps"] = meta.get("duration"), meta.get("fps")
        failed = []
        for name, limit in self.limits.items():
            quantity = name.split("_", 1)[1]
            if limit is None or quantity not in values:
                continue
            value = values[quantity]
            if value is None or (value < limit if name.startswith("min") else value > limit):
                failed.append(name)
        return {"rules_ok": not failed, "rules_failed": ",".join(failed)}
