"""Resolution / aspect-ratio / duration buckets (Open-Sora 1.1+ style).

A :class:`BucketConfig` lists, per named resolution (``"144p"`` … ``"1080p"``, a square
``"256"``, or an explicit ``"HxW"``), the frame counts a clip may be cut to, each with a
sampling probability and a batch size, and the aspect-ratio bins that turn a resolution
(a pixel area) into exact ``(height, width)`` sizes. Frame count 1 is the image bucket:
images and single frames of videos land there, never in a batch with videos.

:meth:`BucketConfig.assign` puts one sample in the bucket that keeps most of its content: it
walks the resolutions from the largest area down and, within one, the frame counts from the
longest down, and takes the first bucket that (a) needs no more than ``max_upscale`` times
the sample's pixels along either side once the sample is resized to cover the bucket's
nearest-aspect size, (b) needs no more frames than the sample has, and (c) wins its
probability draw (a bucket with probability ``p`` keeps a fitting sample with chance ``p``
and otherwise passes it to the next smaller candidate, as in Open-Sora). A sample that fits
no bucket gets ``None`` and a reason, which the data modules count and report.

The same config sizes the data modules' batches, the latent cache (``lvdm data encode
--buckets``) and the memory planner (``lvdm estimate --buckets``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lvdm.data.media_probe import probe_media
from lvdm.data.schema import media_entry, sample_json

__all__ = ["Bucket", "BucketConfig", "resolution_area", "sample_size", "DEFAULT_ASPECT_RATIOS", "UNFIT_REASONS"]

# height × width of the named resolutions (Open-Sora's 16:9 sizes)
_NAMED = {"144p": (144, 256), "240p": (240, 426), "360p": (360, 640), "480p": (480, 854),
          "720p": (720, 1280), "1080p": (1080, 1920)}

#: height / width of the default aspect-ratio bins: 9:16, 3:4, 1:1, 4:3, 16:9 (portrait ... landscape)
DEFAULT_ASPECT_RATIOS = (16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16)

#: why :meth:`BucketConfig.assign` may find no bucket
UNFIT_REASONS = ("too_small", "too_short", "dropped")


def resolution_area(name: str) -> int:
    """Pixel area of a resolution name: ``"144p"`` … ``"1080p"`` (16:9), any ``"<N>p"``
    (``N × round(16 N / 9)``), a square ``"<N>"``, or ``"<H>x<W>"``."""
    if name in _NAMED:
        h, w = _NAMED[name]
        return h * w
    if m := re.fullmatch(r"(\d+)p", name):
        n = int(m[1])
        return n * round(16 * n / 9)
    if m := re.fullmatch(r"(\d+)", name):
        return int(m[1]) ** 2
    if m := re.fullmatch(r"(\d+)x(\d+)", name):
        return int(m[1]) * int(m[2])
    raise ValueError(f"unknown resolution name {name!r}: use 144p/240p/360p/480p/720p/1080p, "
                     f"'<N>p' (16:9 of height N), '<N>' (N×N) or '<H>x<W>'")


@dataclass(frozen=True)
class Bucket:
    """One batch shape: ``num_frames × height × width`` pixels, ``batch_size`` samples a batch.

    ``name`` reads ``"<resolution>/<frames>f/<h>x<w>"``; ``probability`` is the chance a
    fitting sample is kept here (see :class:`BucketConfig`)."""

    name: str
    resolution: str
    num_frames: int
    height: int
    width: int
    batch_size: int
    probability: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, height, width)``."""
        return self.num_frames, self.height, self.width

    @property
    def is_image(self) -> bool:
        return self.num_frames == 1


def _bin_size(area: int, ratio: float, multiple_of: int) -> tuple[int, int]:
    """``(h, w)`` with ``h / w ≈ ratio``, ``h · w ≈ area``, both multiples of ``multiple_of``."""
    h = max(multiple_of, round(math.sqrt(area * ratio) / multiple_of) * multiple_of)
    w = max(multiple_of, round(math.sqrt(area / ratio) / multiple_of) * multiple_of)
    return h, w


class BucketConfig:
    """Which (resolution, aspect ratio, frame count) buckets a run trains on, and how much.

    Example (YAML, an Open-Sora 1.2-like mix; a frame count maps to ``[probability, batch size]``)::

        buckets:
          class_path: lvdm.data.buckets.BucketConfig
          init_args:
            resolutions:
              144p: {1: [1.0, 128], 51: [1.0, 24], 102: [0.5, 12]}
              360p: {1: [0.5, 32], 51: [0.5, 6]}
              720p: {1: [0.3, 8], 51: [0.3, 1]}
            max_upscale: 1.0

    Args:
        resolutions: resolution name → {frame count → (probability, batch size)}. Names:
            ``144p`` … ``1080p``, ``<N>p`` (16:9 of height N), ``<N>`` (N×N, also as a number) or ``<H>x<W>``;
            only the name's pixel area matters, the aspect bins give the exact sizes. Frame
            count 1 is the image bucket.
        aspect_ratios: height/width ratios of the bins, the same for every resolution, or a
            dict giving each resolution its own list (default: 16:9, 4:3, 1:1, 3:4, 9:16).
        max_upscale: largest factor a sample may be enlarged by to cover a bucket (1: never
            upscale; a 1.1 lets a 136-pixel-high clip into a 144-pixel bucket).
        multiple_of: bucket heights and widths are rounded to multiples of this (the
            compressor's downsampling times the patch size, e.g. 8 × 2 = 16).
        frame_interval: step between the frames taken from a video (a bucket of ``T``
            frames needs ``(T - 1) · frame_interval + 1`` source frames).
    """

    def __init__(
        self,
        resolutions: dict[str | int, dict[int, tuple[float, int]]],
        aspect_ratios: Optional[list[float] | dict[str | int, list[float]]] = None,
        max_upscale: float = 1.0,
        multiple_of: int = 16,
        frame_interval: int = 1,
    ) -> None:
        if not resolutions:
            raise ValueError("BucketConfig needs at least one resolution")
        if max_upscale < 1.0 or multiple_of < 1 or frame_interval < 1:
            raise ValueError(f"need max_upscale >= 1, multiple_of >= 1, frame_interval >= 1; got "
                             f"{max_upscale}, {multiple_of}, {frame_interval}")
        self.max_upscale, self.multiple_of, self.frame_interval = max_upscale, multiple_of, frame_interval
        # str(name): YAML reads an unquoted square size (256:) as a number
        self.resolutions = {str(name): {int(t): (float(p), int(b)) for t, (p, b) in frames.items()}
                            for name, frames in resolutions.items()}
        ratios = aspect_ratios if aspect_ratios is not None else list(DEFAULT_ASPECT_RATIOS)
        if isinstance(ratios, dict):
            ratios = {str(name): r for name, r in ratios.items()}
        if isinstance(ratios, dict) and set(self.resolutions) - set(ratios):
            missing = sorted(set(self.resolutions) - set(ratios))
            raise ValueError(f"aspect_ratios names no bins for resolution(s) {missing}")
        self.aspect_ratios = {name: [float(r) for r in (ratios[name] if isinstance(ratios, dict) else ratios)]
                              for name in self.resolutions}
        self.area = {name: resolution_area(name) for name in self.resolutions}
        for name, frames in self.resolutions.items():
            if not frames:
                raise ValueError(f"resolution {name!r} lists no frame counts")
            for t, (p, b) in frames.items():
                if t < 1 or not 0.0 <= p <= 1.0 or b < 1:
                    raise ValueError(f"bucket {name}/{t}f: need frames >= 1, probability in [0, 1], "
                                     f"batch size >= 1; got {t}, {p}, {b}")
            if not self.aspect_ratios[name] or min(self.aspect_ratios[name]) <= 0:
                raise ValueError(f"resolution {name!r}: aspect ratios must be a non-empty list of positive numbers")
        # candidates in the order assign() tries them: larger area first, then longer clips
        self._order = sorted(self.resolutions, key=lambda n: -self.area[n])

    # ------------------------------------------------------------------ the buckets
    def bin_size(self, resolution: str, aspect: float) -> tuple[int, int]:
        """``(h, w)`` of the bin of ``resolution`` nearest (in log ratio) to ``aspect`` = h / w."""
        ratio = min(self.aspect_ratios[resolution], key=lambda r: abs(math.log(r / aspect)))
        return _bin_size(self.area[resolution], ratio, self.multiple_of)

    def bucket(self, resolution: str, num_frames: int, height: int, width: int) -> Bucket:
        """The :class:`Bucket` for a resolution, frame count and bin size."""
        p, b = self.resolutions[resolution][num_frames]
        return Bucket(f"{resolution}/{num_frames}f/{height}x{width}", resolution, num_frames, height, width, b, p)

    def buckets(self) -> list[Bucket]:
        """Every bucket (each resolution × frame count × aspect bin), largest first."""
        out = []
        for name in self._order:
            sizes = dict.fromkeys(_bin_size(self.area[name], r, self.multiple_of) for r in self.aspect_ratios[name])
            for t in sorted(self.resolutions[name], reverse=True):
                out += [self.bucket(name, t, h, w) for h, w in sizes]
        return out

    def span(self, num_frames: int) -> int:
        """Source frames a clip of ``num_frames`` frames needs."""
        return (num_frames - 1) * self.frame_interval + 1

    # ------------------------------------------------------------------ assignment
    def assign(self, height: int, width: int, num_frames: int,
               rng: np.random.Generator) -> tuple[Optional[Bucket], str]:
        """The bucket for a sample of ``height × width`` pixels and ``num_frames`` frames
        (1 for an image), or ``None``; and the reason: ``"ok"`` or one of
        :data:`UNFIT_REASONS` (``too_small``: every bucket would upscale it beyond
        ``max_upscale``; ``too_short``: no bucket that is small enough has few enough frames;
        ``dropped``: it fit, but lost every probability draw).

        Draws from ``rng`` once per fitting candidate, so the result is reproducible."""
        if height < 1 or width < 1 or num_frames < 1:
            raise ValueError(f"sample size must be positive, got {num_frames} frames of {height}x{width}")
        small_enough = fitted = False
        for name in self._order:
            h, w = self.bin_size(name, height / width)
            if max(h / height, w / width) > self.max_upscale + 1e-9:
                continue
            small_enough = True
            for t in sorted(self.resolutions[name], reverse=True):
                if self.span(t) > num_frames:
                    continue
                fitted = True
                p, _ = self.resolutions[name][t]
                if p >= 1.0 or rng.random() < p:
                    return self.bucket(name, t, h, w), "ok"
        return None, ("dropped" if fitted else "too_short" if small_enough else "too_small")

    def expected_frequencies(self, height: int, width: int, num_frames: int) -> dict[str, float]:
        """Probability of each bucket (by name; ``None`` for no bucket) for a sample of this
        size, computed exactly from the probabilities — what :meth:`assign` draws from."""
        out: dict = {}
        left = 1.0
        for name in self._order:
            h, w = self.bin_size(name, height / width)
            if max(h / height, w / width) > self.max_upscale + 1e-9:
                continue
            for t in sorted(self.resolutions[name], reverse=True):
                if self.span(t) > num_frames:
                    continue
                p = min(1.0, self.resolutions[name][t][0])
                out[self.bucket(name, t, h, w).name] = left * p
                left *= 1.0 - p
        out[None] = left
        return out

    def __repr__(self) -> str:
        return (f"BucketConfig(resolutions={self.resolutions}, max_upscale={self.max_upscale}, "
                f"multiple_of={self.multiple_of}, frame_interval={self.frame_interval})")


def sample_size(sample: dict) -> tuple[int, int, int]:
    """``(height, width, frames)`` of a raw WebDataset sample's video or image (1 frame): from
    its ``key.json`` when that gives all three, else from the media header."""
    meta = sample_json(sample)  # a BadMetadataError (a ValueError) unless an object
    size = [meta.get(name) for name in ("height", "width", "frames")]
    if all(isinstance(v, int) and v > 0 for v in size):
        return size[0], size[1], size[2]
    ext, media = media_entry(sample)
    info = probe_media(media, ext)  # a ProbeError (a ValueError) when it is not readable media
    return info.height, info.width, info.frames
