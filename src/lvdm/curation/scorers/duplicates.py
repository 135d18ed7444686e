"""Near-duplicates: perceptual hashes of key frames (imagehash), compared across the dataset."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from lvdm.curation.frames import Clip
from lvdm.curation.scorers.base import Scorer

__all__ = ["DuplicateScorer", "chroma_signature"]

#: The side of the grid a frame's colour signature averages over.
CHROMA_GRID = 4


def chroma_signature(frame: np.ndarray) -> str:
    """A frame's colour layout as hex: the CIELAB ``a``/``b`` (8-bit OpenCV scale) of the
    frame averaged over a 4x4 grid (32 bytes). Lightness is left out: pHash already sees it."""
    import cv2

    small = cv2.resize(frame, (CHROMA_GRID, CHROMA_GRID), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.cvtColor(small, cv2.COLOR_RGB2LAB)[..., 1:]).tobytes().hex()


def _chroma_distance(a: Sequence[str], b: Sequence[str]) -> float:
    """Mean absolute chroma difference between two samples' signatures, over frames and cells."""
    left = np.frombuffer(bytes.fromhex("".join(a)), np.uint8).astype(np.int16)
    right = np.frombuffer(bytes.fromhex("".join(b)), np.uint8).astype(np.int16)
    return float(np.abs(left - right).mean())


class DuplicateScorer(Scorer):
    """Flags a sample whose key frames look like an earlier sample's.

    Each clip gets ``phash``: the 64-bit perceptual hash (DCT of a 32x32 grayscale) of each of
    ``num_frames`` evenly spaced frames, as hex strings. After scoring, samples are visited in
    manifest order; one whose hashes differ from an earlier kept sample's (with as many hashes:
    stills are compared with stills) by at most ``max_distance`` bits **per hash** on average
    is a duplicate, and ``duplicate_of`` names that sample's key (empty for originals). The
    limit is per hash, so a still and a 4-frame clip are held to the same standard.
    Re-encoding or rescaling moves a hash by 0-6 bits; unrelated frames differ by ~32, and
    random shapes on flat backgrounds (the hardest case: little texture) by 8 or more.

    pHash sees only grey levels: the same layout in other colours hashes alike. With ``color``
    each frame also gets a colour signature (``chroma``: :func:`chroma_signature`) and a
    duplicate must also be within ``max_color_distance`` of it (mean absolute CIELAB a/b
    difference, 0-255 scale; a re-encode moves it by ~0.5-2, a recolouring by 14 or more).

    Candidates are found without comparing every pair: the concatenated hashes are cut into
    ``limit + 1`` bands (``limit`` the total bits allowed), and two signatures within ``limit``
    bits agree exactly on at least one band (pigeonhole), so bucketing by band finds every match.

    Args:
        num_frames: key frames hashed per clip.
        max_distance: differing bits per 64-bit hash (mean over the key frames) still called
            a duplicate.
        color: also require similar colours (writes ``chroma``).
        max_color_distance: with ``color``, the largest mean chroma difference of a duplicate.
    """

    name = "duplicates"
    fields = ("phash", "chroma", "duplicate_of")

    def __init__(self, num_frames: int = 4, max_distance: float = 6, color: bool = False,
                 max_color_distance: float = 8.0) -> None:
        if not 0 <= max_distance < 64 or max_color_distance < 0:
            raise ValueError(f"max_distance must be in [0, 64) bits per hash and max_color_distance >= 0, "
                             f"got {max_distance} and {max_color_distance}")
        self.num_frames = num_frames
        self.max_distance = max_distance
        self.color = color
        self.max_color_distance = max_color_distance

    def score(self, clip: Clip) -> dict:
        import imagehash
        from PIL import Image

        frames = self.frames(clip)
        out = {"phash": [str(imagehash.phash(Image.fromarray(f))) for f in frames]}
        if self.color:
            out["chroma"] = [chroma_signature(f) for f in frames]
        return out

    def _same_colours(self, a: dict, b: dict) -> bool:
        if not self.color:
            return True
        if not a.get("chroma") or not b.get("chroma") or len(a["chroma"]) != len(b["chroma"]):
            return False
        return _chroma_distance(a["chroma"], b["chroma"]) <= self.max_color_distance

    def finalize(self, keys: Sequence[str], results: list[dict]) -> list[dict]:
        buckets: dict[tuple, list[int]] = defaultdict(list)  # (hashes, band, bits) -> kept samples
        signatures: dict[int, int] = {}
        out = []
        for i, fields in enumerate(results):
            hashes = fields.get("phash")
            if not hashes:  # the scorer failed on this sample: nothing to compare
                out.append(fields)
                continue
            value, bits = int("".join(hashes), 16), 4 * sum(len(h) for h in hashes)
            limit = math.floor(self.max_distance * bits / 64 + 1e-9)
            band_keys = _bands(value, bits, limit + 1, len(hashes))
            original: Optional[int] = None
            candidates = sorted({j for band in band_keys for j in buckets.get(band, ())})
            for j in candidates:  # earliest first: a duplicate names the first sample it copies
                if bin(value ^ signatures[j]).count("1") <= limit and self._same_colours(fields, results[j]):
                    original = j
                    break
            if original is None:
                signatures[i] = value
                for band in band_keys:
                    buckets[band].append(i)
            out.append({**fields, "duplicate_of": keys[original] if original is not None else ""})
        return out


def _bands(value: int, bits: int, bands: int, hashes: int) -> list[tuple]:
    """The bucket keys of a signature of ``bits`` bits cut into ``bands`` bands."""
    cuts = [round(b * bits / bands) for b in range(bands + 1)]
    return [(hashes, b, (value >> cuts[b]) & ((1 << (cuts[b + 1] - cuts[b])) - 1)) for b in range(bands)]
