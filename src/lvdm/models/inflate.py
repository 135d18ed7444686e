"""Image DiT → tubelet video DiT: inflate the patch embedding and the output layer in time.

An image model (temporal patch 1, trained on single frames) and a video model whose patches
span ``pt`` frames differ only in two weights: the patch embedding ``[D, C, 1, ph, pw] →
[D, C, pt, ph, pw]`` and the final linear ``[ph·pw·C, D] → [pt·ph·pw·C, D]``. Inflating them
the I3D / ViViT way, the embedding's kernel repeated over time and divided by ``pt`` (a
still clip embeds as its frame did) and the output rows repeated for each frame, makes the
video model start as the image model applied to still clips: on a clip of ``pt`` copies of
an image it predicts ``pt`` copies of the image model's prediction (tested). Every other
weight is shared as it is, and the position code does not change (one patch frame in both).
:func:`lvdm.checkpoints.init_from.init_from` applies this with ``inflate_time=True``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

PATCH_KEY = "x_embedder.proj.weight"
OUT_KEYS = ("final_layer.linear.weight", "final_layer.linear.bias")


def inflate_in_time(key: str, value: torch.Tensor, shape: Sequence[int]) -> Optional[torch.Tensor]:
    """``value`` (an image DiT's tensor under ``key``) inflated to the video DiT's ``shape``, or
    ``None`` when ``key`` is not the patch embedding or output layer of a DiT, or ``value`` is
    not the temporal-patch-1 form of ``shape``."""
    shape = tuple(shape)
    if key.endswith(PATCH_KEY) and value.ndim == 5 and len(shape) == 5:
        if value.shape[2] == 1 and value.shape[:2] + value.shape[3:] == shape[:2] + shape[3:]:
            return value.repeat(1, 1, shape[2], 1, 1) / shape[2]
    elif key.endswith(OUT_KEYS) and value.ndim == len(shape) and value.shape[1:] == shape[1:]:
        if shape[0] % value.shape[0] == 0 and shape[0] > value.shape[0]:
            # output features are ordered (pt, ph, pw, C): the image's (ph, pw, C) block per frame
            return value.repeat(shape[0] // value.shape[0], *([1] * (value.ndim - 1)))
    return None
