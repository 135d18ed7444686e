"""Given frames for image-to-video and continuation: images and videos read as tensors.

``lvdm sample --image`` and ``--video`` (and the Python API, :meth:`lvdm.training.module.
LatentDiffusionModule.generate` with ``first_frames`` and :meth:`~lvdm.training.module.
LatentDiffusionModule.extend`) take frames as ``[B, 3, T, H, W]`` float tensors in [-1, 1];
these functions make them from files, resized to the requested ``(height, width)`` the way the
data pipeline resizes training clips (shorter side covers it, centre crop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

Size = Optional[tuple[int, int]]


def fit_frames(clip: torch.Tensor, size: Size) -> torch.Tensor:
    """A clip ``[3, T, H, W]`` resized so its shorter side covers ``size`` ``(height, width)``
    (bilinear, antialiased) and centre-cropped to it: the resize of training clips
    (:func:`lvdm.data.video.decode_clip`). ``None`` keeps the clip as it is."""
    from lvdm.data.video import _resize_crop

    if size is None or tuple(clip.shape[-2:]) == tuple(size):
        return clip
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"a frame size is (height, width), both positive; got {tuple(size)}")
    return _resize_crop(clip.permute(1, 0, 2, 3), tuple(size)).permute(1, 0, 2, 3).clamp(-1.0, 1.0).contiguous()


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` → float ``[3, T, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def read_image(path: str | Path, size: Size = None) -> torch.Tensor:
    """An image file as a one-frame clip ``[3, 1, H, W]`` in [-1, 1] (RGB; alpha dropped),
    resized to ``size`` ``(height, width)`` by :func:`fit_frames` (``None``: its own size)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from exc
    return fit_frames(frames_to_tensor(rgb[None]), size)


def read_images(source: str | Path, count: int, size: Size = None) -> torch.Tensor:
    """First frames for ``count`` videos ``[count, 3, 1, H, W]``: one image file shared by all,
    or a folder holding exactly ``count`` images (taken in name order: one per prompt); each
    resized to ``size`` ``(height, width)`` by :func:`fit_frames` (``None``: their own size,
    which must then be the same for all)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) != count:
            raise ValueError(f"image folder {str(source)!r} holds {len(files)} images for {count} prompts; "
                             "give one image per prompt (name order) or a single image file")
        images = [read_image(f, size) for f in files]
        sizes = {tuple(i.shape) for i in images}
        if len(sizes) > 1:
            raise ValueError(f"the images in {str(source)!r} differ in size: {sorted(sizes)}")
        return torch.stack(images)
    return read_image(source, size)[None].expand(count, -1, -1, -1, -1)


def read_video(path: str | Path, size: Size = None) -> torch.Tensor:
    """Every frame of a video file as ``[3, T, H, W]`` in [-1, 1], resized to ``size``
    ``(height, width)`` by :func:`fit_frames` (``None``: its own size)."""
    from lvdm.data.video import read_frames

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    frames, _ = read_frames(str(path))
    return fit_frames(frames_to_tensor(frames), size)
