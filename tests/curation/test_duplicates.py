"""Near-duplicate detection: false positives among independent samples, and real copies found.

The false-positive rates are measured here (the numbers are in the asserts and in the README):
200 independent random-shape images, 200 independent 8-frame clips of moving random shapes.
Flat backgrounds with a few shapes are the hard case for pHash (little texture, so the hashes
of unrelated images agree on more bits than those of photographs).
"""

import io

import numpy as np
import pytest

from lvdm.curation.frames import Clip, load_clip_frames
from lvdm.curation.scorers import DuplicateScorer
from lvdm.data.video import encode_mp4


def _shape(canvas, rng, offset=(0, 0)):
    import cv2

    h, w = canvas.shape[:2]
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    x, y = int(rng.integers(0, w)) + offset[0], int(rng.integers(0, h)) + offset[1]
    if rng.random() < 0.5:
        cv2.rectangle(canvas, (x, y), (x + int(rng.integers(8, w // 2)), y + int(rng.integers(8, h // 2))), colour, -1)
    else:
        axes = (int(rng.integers(5, w // 3)), int(rng.integers(5, h // 3)))
        cv2.ellipse(canvas, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)


def random_shapes(seed, h=96, w=128):
    """A flat random background with 1-4 random filled rectangles/ellipses in random colours."""
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    for _ in range(int(rng.integers(1, 5))):
        _shape(image, rng)
    return image


def moving_shapes(seed, frames=8, h=96, w=128):
    """Frames of random shapes drifting at a random speed over a flat random background."""
    rng = np.random.default_rng(seed)
    background, count = rng.integers(0, 256, 3), int(rng.integers(1, 5))
    velocity = rng.integers(-3, 4, 2)
    out = []
    for t in range(frames):
        frame = np.empty((h, w, 3), np.uint8)
        frame[:] = background
        shapes = np.random.default_rng(seed + 10_000)  # the same shapes every frame, moved
        for _ in range(count):
            _shape(frame, shapes, offset=tuple(int(v) * t for v in velocity))
        out.append(frame)
    return np.stack(out)


def _clip(key, frames):
    frames = np.asarray(frames)
    if frames.ndim == 3:
        return Clip(key, "image", 1, {0: frames})
    return Clip(key, "video", len(frames), dict(enumerate(frames)))


def _flagged(scorer, clips):
    rows = scorer.finalize([c.key for c in clips], [scorer.score(c) for c in clips])
    return [r["duplicate_of"] for r in rows]


def _jpeg_rescaled(image, size=(160, 120), quality=40):
    import cv2
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize("color", [False, True])
def test_false_positives_on_200_independent_images_and_200_independent_clips(color):
    scorer = DuplicateScorer(color=color)
    images = [_clip(f"img{i}", random_shapes(i)) for i in range(200)]
    clips = [_clip(f"clip{i}", moving_shapes(1000 + i)) for i in range(200)]
    flagged_images = sum(bool(d) for d in _flagged(scorer, images))
    flagged_clips = sum(bool(d) for d in _flagged(scorer, clips))
    print(f"color={color}: {flagged_images}/200 images, {flagged_clips}/200 clips flagged")
    # measured: 0/200 images, 0/200 clips (the old limit of 24 bits over all of a sample's hashes,
    # four times looser for a still than for a 4-frame clip, flagged 153 of these 200 images; 0 of the clips)
    assert flagged_images <= 2 and flagged_clips <= 2  # at most 1 %
    assert flagged_images == 0 and flagged_clips == 0


@pytest.mark.parametrize("color", [False, True])
def test_a_reencoded_rescaled_copy_is_still_flagged(color):
    import cv2

    scorer = DuplicateScorer(color=color)
    index = lambda n: scorer.frame_indices(n)  # noqa: E731
    originals, copies = [], []
    for i in range(20):
        image = random_shapes(500 + i)
        originals.append(_clip(f"img{i}", image))
        copies.append(load_clip_frames(_jpeg_rescaled(image), "jpg", f"img{i}-copy", index))
    for i in range(5):
        frames = moving_shapes(2000 + i)
        originals.append(load_clip_frames(encode_mp4(frames, fps=8), "mp4", f"clip{i}", index))
        rescaled = np.stack([cv2.resize(f, (160, 120)) for f in frames])
        copies.append(load_clip_frames(encode_mp4(rescaled, fps=8, crf=35), "mp4", f"clip{i}-copy", index))
    result = _flagged(scorer, originals + copies)
    assert result[: len(originals)] == [""] * len(originals)
    assert result[len(originals):] == [c.key for c in originals]


def test_recoloured_layouts_are_told_apart_only_with_color():
    clips, recoloured = [], []
    for i in range(20):
        frames = moving_shapes(3000 + i)
        clips.append(_clip(f"clip{i}", frames))
        recoloured.append(_clip(f"clip{i}-recoloured", frames[..., [1, 2, 0]]))
    grey = _flagged(DuplicateScorer(), clips + recoloured)
    colour = _flagged(DuplicateScorer(color=True), clips + recoloured)
    assert sum(bool(d) for d in grey[20:]) >= 3  # pHash is grey: many recolourings look alike to it
    assert colour == [""] * 40


def test_the_limit_is_per_hash_for_stills_and_clips():
    """A still whose hash differs by 12 bits from an earlier one is not a duplicate at 6 bits per
    hash (the old code allowed 24 bits whatever the number of hashes)."""
    scorer = DuplicateScorer(max_distance=6)
    base = 0x0123456789ABCDEF
    near = base ^ int("1" * 12, 2)
    stills = [{"phash": [f"{base:016x}"]}, {"phash": [f"{near:016x}"]}, {"phash": [f"{base ^ 0b111111:016x}"]}]
    assert [r["duplicate_of"] for r in scorer.finalize(["a", "b", "c"], stills)] == ["", "", "a"]
    clips = [{"phash": [f"{base:016x}"] * 4}, {"phash": [f"{near:016x}"] * 2 + [f"{base:016x}"] * 2}]
    assert [r["duplicate_of"] for r in scorer.finalize(["a", "b"], clips)] == ["", "a"]  # 24 bits over 4 hashes
