"""The synthetic shapes world: the embedded default dataset.

Each clip shows one coloured shape on black moving in a straight line at constant speed, with
the caption ``"a {colour} {shape} moving {direction}"``. Eight colour/shape/direction
combinations (``HELD_OUT``) never appear in the train split and make up the val split, so a
model's compositional generalisation can be measured with the analytic probe in
:mod:`lvdm.shapes.probe`. The names and values below are part of the public contract.

``EXTRA_COLOURS`` lie outside the default world: its data never shows them, and only a run that
asks for them (``lvdm data synth --colours magenta``, ``lvdm eval probe --colours ...``) renders
or reads them: a concept a model trained on the default world has never seen
(``examples/lora_new_concept.py`` teaches one to it with LoRA).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from lvdm.data.shards import write_shards
from lvdm.data.video import encode_mp4

__all__ = [
    "NUM_FRAMES", "SIZE", "FPS", "COLOURS", "SHAPES", "DIRECTIONS", "OBJECT_SIZE", "SPEED",
    "HELD_OUT", "ALL_COMBOS", "TRAIN_COMBOS", "EXTRA_COLOURS", "EXTRA_HELD_OUT", "palette", "caption",
    "parse_caption", "render_clip", "write_synthetic_dataset",
]

NUM_FRAMES = 8
SIZE = 32
FPS = 8
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
OBJECT_SIZE = 12
SPEED = 2
HELD_OUT = (
    ("red", "square", "left"), ("green", "circle", "right"), ("blue", "triangle", "up"),
    ("yellow", "square", "down"), ("red", "triangle", "down"), ("green", "square", "up"),
    ("blue", "circle", "left"), ("yellow", "triangle", "right"),
)
ALL_COMBOS = tuple(itertools.product(COLOURS, SHAPES, DIRECTIONS))
TRAIN_COMBOS = tuple(c for c in ALL_COMBOS if c not in HELD_OUT)
#: Colours the default world never shows (see the module docstring); magenta is far from every
#: default colour (nearest: blue, 179 apart in RGB) and as bright as they are (luma 120).
EXTRA_COLOURS = {"magenta": (220, 50, 220)}
#: The combinations of the extra colours kept out of their train split (their val split): one per
#: direction, every shape at least once, so the held-out clips test the colour in new company.
EXTRA_HELD_OUT = (
    ("magenta", "square", "up"), ("magenta", "circle", "left"), ("magenta", "triangle", "right"),
    ("magenta", "circle", "down"),
)

# Unit velocity per direction as (dx, dy); image y grows downward, so "up" is dy = -1.
_VELOCITY = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_SUPERSAMPLE = 4


def palette(colours: Sequence[str] | None = None) -> dict[str, tuple[int, int, int]]:
    """``{name: rgb}`` of the named colours, in the given order (None: the default ``COLOURS``).

    Raises:
        ValueError: a name that is neither in ``COLOURS`` nor in ``EXTRA_COLOURS`` (naming the
            choices), a repeated name, or an empty list.
    """
    if colours is None:
        return dict(COLOURS)
    known = {**COLOURS, **EXTRA_COLOURS}
    colours = list(colours)
    unknown = [c for c in colours if c not in known]
    if unknown or not colours or len(set(colours)) != len(colours):
        raise ValueError(f"colours must be distinct names from {tuple(known)}, got {colours}")
    return {name: known[name] for name in colours}


def caption(colour: str, shape: str, direction: str) -> str:
    """The caption of a clip: ``"a {colour} {shape} moving {direction}"``."""
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str, colours: Sequence[str] | None = None) -> dict:
    """Read colour, shape and direction from a caption.

    Case-insensitive, ignores other words and accepts plurals (``"Two RED squares, moving up!"``).
    The first known word of each kind wins; a missing attribute is ``None``. The colour words
    are ``colours`` (see :func:`palette`; None: the default ``COLOURS``).

    Returns:
        ``{"colour": str | None, "shape": str | None, "direction": str | None}``.
    """
    found: dict = {"colour": None, "shape": None, "direction": None}
    vocab = {"colour": palette(colours), "shape": SHAPES, "direction": DIRECTIONS}
    for word in re.findall(r"[a-z]+", text.lower()):
        for attribute, words in vocab.items():
            for candidate in (word, word[:-1] if word.endswith("s") else None):
                if found[attribute] is None and candidate in words:
                    found[attribute] = candidate
    return found


def _coverage(shape: str, x0: np.ndarray, y0: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage ``[T, size, size]`` in [0, 1] of the shape with top-left (x0, y0).

    Rendered at ``_SUPERSAMPLE``x resolution (sample points at sub-pixel centres) and
    box-downsampled, all frames at once.
    """
    s = _SUPERSAMPLE
    centres = (np.arange(size * s) + 0.5) / s
    px = centres[None, None, :] - x0[:, None, None]  # position relative to the bounding box
    py = centres[None, :, None] - y0[:, None, None]
    n = OBJECT_SIZE
    if shape == "square":
        inside = (px >= 0) & (px < n) & (py >= 0) & (py < n)
    elif shape == "circle":
        inside = (px - n / 2) ** 2 + (py - n / 2) ** 2 <= (n / 2) ** 2
    elif shape == "triangle":  # isosceles, apex at top centre, base along the bottom edge
        inside = (py >= 0) & (py < n) & (np.abs(px - n / 2) <= py / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.reshape(len(x0), size, s, size, s).mean(axis=(2, 4))


def render_clip(
    colour: str,
    shape: str,
    direction: str,
    rng: np.random.Generator,
    num_frames: int = NUM_FRAMES,
    size: int = SIZE,
) -> np.ndarray:
    """Render one clip of the shapes world.

    The start position is uniform (continuous) over all positions that keep the whole object
    inside the frame for every frame; the object moves ``SPEED`` px per frame.

    Args:
        colour: A key of ``COLOURS`` or ``EXTRA_COLOURS``.
        shape: One of ``SHAPES``.
        direction: One of ``DIRECTIONS``.
        rng: Generator for the start position.
        num_frames: Frames in the clip.
        size: Frame height and width in pixels.

    Returns:
        ``[num_frames, size, size, 3]`` uint8 RGB frames on black.
    """
    known = {**COLOURS, **EXTRA_COLOURS}
    if colour not in known:
        raise ValueError(f"unknown colour {colour!r}; expected one of {tuple(known)}")
    if direction not in _VELOCITY:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    travel = SPEED * (num_frames - 1)
    room = size - OBJECT_SIZE - travel  # free start range along the motion axis
    if room < 0:
        raise ValueError(f"a {OBJECT_SIZE}px object moving {travel}px does not fit in {size}px "
                         f"over {num_frames} frames")
    dx, dy = _VELOCITY[direction]
    # Along the motion axis the start lies in [0, room] moving forward and in
    # [travel, travel + room] moving backward; across it anywhere in [0, size - OBJECT_SIZE].
    lo_x, hi_x = (0, size - OBJECT_SIZE) if dx == 0 else ((0, room) if dx > 0 else (travel, travel + room))
    lo_y, hi_y = (0, size - OBJECT_SIZE) if dy == 0 else ((0, room) if dy > 0 else (travel, travel + room))
    t = np.arange(num_frames) * SPEED
    x0 = rng.uniform(lo_x, hi_x) + dx * t
    y0 = rng.uniform(lo_y, hi_y) + dy * t
    alpha = _coverage(shape, x0, y0, size)
    rgb = np.asarray(known[colour], dtype=np.float64)
    return np.rint(alpha[..., None] * rgb).astype(np.uint8)


def _samples(split: str, combos, count: int, rng: np.random.Generator, cycle: bool,
             num_frames: int, size: int):
    for index in range(count):
        combo = combos[index % len(combos)] if cycle else combos[rng.integers(len(combos))]
        colour, shape, direction = combo
        frames = render_clip(colour, shape, direction, rng, num_frames=num_frames, size=size)
        meta = {"fps": FPS, "frames": num_frames, "height": size, "width": size,
                "colour": colour, "shape": shape, "direction": direction, "split": split}
        yield {"key": f"{split}_{index:06d}", "mp4": encode_mp4(frames, fps=FPS),
               "txt": caption(colour, shape, direction), "json": meta}


def write_synthetic_dataset(
    out: str,
    num_train: int = 4000,
    num_val: int = 64,
    seed: int = 0,
    shard_size: int = 1000,
    num_frames: int = NUM_FRAMES,
    size: int = SIZE,
    holdout: bool = True,
    colours: list[str] | None = None,
) -> dict:
    """Write the synthetic shapes dataset as WebDataset shards.

    Train clips draw colour/shape/direction uniformly from the combinations not in
    ``HELD_OUT`` (or ``EXTRA_HELD_OUT``); val clips cycle evenly through the held-out
    combinations. The two splits use independent random streams, so the val set does not change
    with ``num_train``.

    Args:
        out: Output folder; receives ``train-%06d.tar``, ``val-%06d.tar`` and
            ``val_prompts.txt`` (the val captions, one per line, in shard order).
        num_train: Number of train clips.
        num_val: Number of val clips.
        seed: Random seed (combinations and start positions).
        shard_size: Maximum clips per shard.
        num_frames: Frames per clip.
        size: Frame height and width in pixels.
        holdout: Keep the held-out combinations out of train and use only them for val; if
            false, train and val both use every combination (48 of the default colours).
        colours: the colours of the clips, from ``COLOURS`` and ``EXTRA_COLOURS`` (e.g.
            ``[magenta]``: a concept the default world never shows); None: the four of ``COLOURS``
            (the default world, clip for clip).

    Returns:
        Summary dict: ``out``, ``train_shards``, ``val_shards``, ``val_prompts``, ``num_train``,
        ``num_val``, ``train_combos``, ``val_combos``.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    chosen = palette(colours)
    combos = tuple(itertools.product(chosen, SHAPES, DIRECTIONS))
    held_out = tuple(c for c in (*HELD_OUT, *EXTRA_HELD_OUT) if c[0] in chosen)
    train_combos = tuple(c for c in combos if c not in held_out) if holdout else combos
    val_combos = held_out if holdout else combos
    train_rng, val_rng = (np.random.default_rng([seed, split]) for split in (0, 1))
    val_captions: list[str] = []

    with tqdm(total=num_train + num_val, desc="synthetic clips", unit="clip") as bar:
        def progress(samples, record=None):
            for sample in samples:
                if record is not None:
                    record.append(sample["txt"])
                bar.update()
                yield sample

        train = write_shards(
            progress(_samples("train", train_combos, num_train, train_rng, False, num_frames, size)),
            str(root / "train-%06d.tar"), max_count=shard_size)
        val = write_shards(
            progress(_samples("val", val_combos, num_val, val_rng, True, num_frames, size), val_captions),
            str(root / "val-%06d.tar"), max_count=shard_size)
    prompts = root / "val_prompts.txt"
    prompts.write_text("".join(f"{c}\n" for c in val_captions))
    print(f"wrote {num_train} train clips ({len(train_combos)} combinations) and {num_val} val clips "
          f"({len(val_combos)} combinations) to {root}/; val prompts: {prompts}")
    return {"out": str(root), "train_shards": train, "val_shards": val, "val_prompts": str(prompts),
            "num_train": num_train, "num_val": num_val,
            "train_combos": len(train_combos), "val_combos": len(val_combos)}
