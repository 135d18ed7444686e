"""A synthetic shapes dataset of mixed sizes and durations, with images: the smallest data
that exercises bucketed training (``recipes/tiny/buckets.yaml``).

Each sample is a shapes-world clip (:func:`lvdm.shapes.synthetic.render_clip`) rendered on a
square canvas and centre-cropped to a landscape, portrait or square frame, at one of several
lengths; a share of them are single frames stored as png images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lvdm.data.shards import write_shards
from lvdm.shapes.synthetic import ALL_COMBOS, FPS, caption, render_clip
from lvdm.data.video import encode_mp4

__all__ = ["MIXED_SHAPES", "write_mixed_shapes"]

#: (frames, height, width) of the samples, drawn uniformly; frames 1 is stored as a png image
MIXED_SHAPES = ((8, 32, 48), (8, 48, 32), (8, 32, 32), (4, 32, 48), (4, 32, 32), (1, 32, 32), (1, 48, 32))


def _png(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "PNG")
    return out.getvalue()


def _samples(split: str, count: int, rng: np.random.Generator):
    for index in range(count):
        colour, shape, direction = ALL_COMBOS[rng.integers(len(ALL_COMBOS))]
        frames, height, width = MIXED_SHAPES[rng.integers(len(MIXED_SHAPES))]
        side = max(height, width)
        clip = render_clip(colour, shape, direction, rng, num_frames=max(frames, 2), size=side)[:frames]
        top, left = (side - height) // 2, (side - width) // 2
        clip = np.ascontiguousarray(clip[:, top : top + height, left : left + width])
        media = {"png": _png(clip[0])} if frames == 1 else {"mp4": encode_mp4(clip, fps=FPS)}
        meta = {"fps": FPS, "frames": frames, "height": height, "width": width, "kind": "image" if frames == 1 else "video",
                "colour": colour, "shape": shape, "direction": direction, "split": split}
        yield {"key": f"{split}_{index:06d}", **media, "txt": caption(colour, shape, direction), "json": meta}


def write_mixed_shapes(out: str, num_train: int = 2000, num_val: int = 32, seed: int = 0, shard_size: int = 500) -> dict:
    """Write the mixed-size shapes dataset (videos of 4 and 8 frames in landscape, portrait
    and square frames, plus png images) as WebDataset shards.

    Args:
        out: Output folder; receives ``train-%06d.tar``, ``val-%06d.tar`` and ``val_prompts.txt``.
        num_train: Number of train samples.
        num_val: Number of val samples.
        seed: Random seed.
        shard_size: Maximum samples per shard.

    Returns:
        Summary dict: ``out``, ``train_shards``, ``val_shards``, ``shapes`` (sample count per
        ``frames x height x width``).
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    shapes: dict[str, int] = {}
    captions: list[str] = []

    def count(samples, record=None):
        for sample in samples:
            meta = sample["json"]
            name = f"{meta['frames']}x{meta['height']}x{meta['width']}"
            shapes[name] = shapes.get(name, 0) + 1
            if record is not None:
                record.append(sample["txt"])
            yield sample

    train = write_shards(count(_samples("train", num_train, np.random.default_rng([seed, 0]))),
                         str(root / "train-%06d.tar"), max_count=shard_size)
    val = write_shards(count(_samples("val", num_val, np.random.default_rng([seed, 1])), captions),
                       str(root / "val-%06d.tar"), max_count=shard_size)
    (root / "val_prompts.txt").write_text("\n".join(captions) + "\n")
    summary = {"out": str(root), "train_shards": train, "val_shards": val, "shapes": dict(sorted(shapes.items()))}
    print(f"wrote {num_train} train and {num_val} val samples to {root}/: {summary['shapes']}")
    return summary
