"""Motion: mean dense optical-flow magnitude (OpenCV Farneback), Open-Sora's motion score."""

from __future__ import annotations

import numpy as np

from lvdm.curation.frames import Clip, evenly_spaced, resize_short_side
from lvdm.curation.scorers.base import Scorer

__all__ = ["MotionScorer"]


class MotionScorer(Scorer):
    """Mean optical-flow magnitude between consecutive frames, in pixels per frame at a
    shorter side of ``short_side`` pixels, whatever the video's resolution: a pan across a tenth
    of the frame height per frame scores ~25.6 at 240p and at 4K alike.

    Flow is Farneback's (OpenCV) on grayscale frames, computed for ``pairs`` pairs of
    consecutive frames spread over the clip; the score is the mean magnitude over pixels and
    pairs. Larger frames are downscaled to ``short_side`` first (speed); smaller ones are not
    upscaled (interpolation invents no motion to measure) and their flow is scaled by
    ``short_side / their shorter side`` instead. Still images and one-frame clips score 0.

    Args:
        pairs: frame pairs measured per clip.
        short_side: the reference shorter side (and the size flow is computed at, at most).
    """

    name = "motion"
    fields = ("motion",)

    def __init__(self, pairs: int = 4, short_side: int = 256) -> None:
        self.pairs = pairs
        self.short_side = short_side

    def frame_indices(self, total: int) -> list[int]:
        if total < 2:
            return []
        starts = evenly_spaced(total - 1, self.pairs)
        return sorted({i for s in starts for i in (s, s + 1)})

    def score(self, clip: Clip) -> dict:
        import cv2

        starts = [s for s in evenly_spaced(clip.total - 1, self.pairs) if s in clip.frames and s + 1 in clip.frames]
        if not starts:
            return {"motion": 0.0}
        gray = {}
        for index in {i for s in starts for i in (s, s + 1)}:
            gray[index] = cv2.cvtColor(resize_short_side(clip.frames[index], self.short_side), cv2.COLOR_RGB2GRAY)
        unit = self.short_side / min(gray[starts[0]].shape)
        magnitudes = []
        for s in starts:
            flow = cv2.calcOpticalFlowFarneback(
                gray[s], gray[s + 1], None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
                poly_sigma=1.2, flags=0)
            magnitudes.append(float(np.sqrt((flow.astype(np.float64) ** 2).sum(-1)).mean()))
        return {"motion": float(np.mean(magnitudes)) * unit}
