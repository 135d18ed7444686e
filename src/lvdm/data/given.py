"""Given frames for image-to-video and continuation: images and videos read as tensors.

``lvdm sample --image`` and ``--video`` (and the Python API, :meth:`lvdm.module.
LatentDiffusionModule.generate` with ``first_frames`` and :meth:`~lvdm.module.
LatentDiffusionModule.extend`) take frames as ``[B, 3, T, H, W]`` float tensors in [-1, 1];
these functions make them from files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` → float ``[3, T, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a one-frame clip ``[3, 1, H, W]`` in [-1, 1] (RGB; alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from exc
    return frames_to_tensor(rgb[None])


def read_images(source: str | Path, count: int) -> torch.Tensor:
    """First frames for ``count`` videos ``[count, 3, 1, H, W]``: one image file shared by all,
    or a folder holding exactly ``count`` images (taken in name order: one per prompt)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) != count:
            raise ValueError(f"image folder {str(source)!r} holds {len(files)} images for {count} prompts; "
                             "give one image per prompt (name order) or a single image file")
        images = [read_image(f) for f in files]
        sizes = {tuple(i.shape) for i in images}
        if len(sizes) > 1:
            raise ValueError(f"the images in {str(source)!r} differ in size: {sorted(sizes)}")
        return torch.stack(images)
    return read_image(source)[None].expand(count, -1, -1, -1, -1)


def read_video(path: str | Path) -> torch.Tensor:
    """Every frame of a video file as ``[3, T, H, W]`` in [-1, 1]."""
    from lvdm.data.video import read_frames

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    frames, _ = read_frames(str(path))
    return frames_to_tensor(frames)
