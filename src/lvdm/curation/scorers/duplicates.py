"""Near-duplicates: perceptual hashes of key frames (imagehash), compared across the dataset."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from lvdm.curation.frames import Clip
from lvdm.curation.scorers.base import Scorer

__all__ = ["DuplicateScorer"]


class DuplicateScorer(Scorer):
    """Flags a sample whose key frames look like an earlier sample's.

    Each clip gets ``phash``: the 64-bit perceptual hash (DCT of a 32x32 grayscale) of each of
    ``num_frames`` evenly spaced frames, as hex strings. After scoring, samples are visited in
    manifest order; one whose hashes differ from an earlier kept sample's (with as many
    frames) by at most ``max_distance`` bits in total is a duplicate, and ``duplicate_of``
    names that sample's key (empty for originals). Re-encoding, rescaling or a mild colour
    change moves a hash by a few bits; different content by about half of them.

    Candidates are found without comparing every pair: the concatenated hashes are cut into
    ``max_distance + 1`` bands, and two signatures within ``max_distance`` bits agree exactly
    on at least one band (pigeonhole), so bucketing by band finds every match.

    Args:
        num_frames: key frames hashed per clip.
        max_distance: total differing bits (over all key frames) still called a duplicate.
    """

    name = "duplicates"
    fields = ("phash", "duplicate_of")

    def __init__(self, num_frames: int = 4, max_distance: int = 24) -> None:
        self.num_frames = num_frames
        self.max_distance = max_distance

    def score(self, clip: Clip) -> dict:
        import imagehash
        from PIL import Image

        return {"phash": [str(imagehash.phash(Image.fromarray(f))) for f in self.frames(clip)]}

    def finalize(self, keys: Sequence[str], results: list[dict]) -> list[dict]:
        bands = self.max_distance + 1
        buckets: dict[tuple, list[int]] = defaultdict(list)  # (frames, band, bits) -> kept samples
        signatures: dict[int, int] = {}
        out = []
        for i, fields in enumerate(results):
            hashes = fields.get("phash")
            if not hashes:  # the scorer failed on this sample: nothing to compare
                out.append(fields)
                continue
            value, bits = int("".join(hashes), 16), 4 * sum(len(h) for h in hashes)
            cuts = [round(b * bits / bands) for b in range(bands + 1)]
            band_keys = [(len(hashes), b, (value >> cuts[b]) & ((1 << (cuts[b + 1] - cuts[b])) - 1))
                         for b in range(bands)]
            original = None
            candidates = sorted({j for band in band_keys for j in buckets.get(band, ())})
            for j in candidates:  # earliest first: a duplicate names the first sample it copies
                if bin(value ^ signatures[j]).count("1") <= self.max_distance:
                    original = j
                    break
            if original is None:
                signatures[i] = value
                for band in band_keys:
                    buckets[band].append(i)
            out.append({**fields, "duplicate_of": keys[original] if original is not None else ""})
        return out
