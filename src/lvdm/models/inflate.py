"""Image DiT → tubelet video DiT: inflate the patch embedding and the output layer in time.

An image model (temporal patch 1, trained on single frames) and a video model whose patches
span ``pt`` frames differ only in two weights: the patch embedding ``[D, C, 1, ph, pw] →
[D, C, pt, ph, pw]`` and the final linear ``[ph·pw·C, D] → [pt·ph·pw·C, D]``. Inflating them
the I3D / ViViT way, the embedding's kernel repeated over time and divided by ``pt`` (a
still clip embeds as its frame did) and the output rows repeated for each frame, makes the
video model start as the image model applied to still clips: on a clip of ``pt`` copies of
an image it predicts ``pt`` copies of the image model's prediction (tested). Every other
weight is shared as it is, and the position code does not change (one patch frame in both).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

PATCH_KEY = "x_embedder.proj.weight"
OUT_KEYS = ("final_layer.linear.weight", "final_layer.linear.bias")


def inflate_image_state(image_state: Mapping[str, torch.Tensor], video_model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``video_model`` (a :class:`lvdm.models.dit.DiT` with temporal patch
    ``pt``) built from the state of an image DiT (temporal patch 1, otherwise the same
    configuration). Raises ``ValueError`` naming the keys that do not match."""
    target = video_model.state_dict()
    pt = int(video_model.patch_size[0])
    missing = sorted(set(target) - set(image_state))
    unexpected = sorted(set(image_state) - set(target))
    if missing or unexpected:
        raise ValueError(f"the image and video DiTs differ in their parameters: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} (the two recipes must match except patch_size[0])")
    out: dict[str, torch.Tensor] = {}
    for key, ref in target.items():
        value = image_state[key]
        if key == PATCH_KEY and value.shape != ref.shape:
            if value.shape[2] != 1 or value.shape[:2] + value.shape[3:] != ref.shape[:2] + ref.shape[3:]:
                raise ValueError(f"{key}: cannot inflate {tuple(value.shape)} to {tuple(ref.shape)}")
            value = value.repeat(1, 1, pt, 1, 1) / pt
        elif key in OUT_KEYS and value.shape != ref.shape:
            if value.shape[0] * pt != ref.shape[0] or value.shape[1:] != ref.shape[1:]:
                raise ValueError(f"{key}: cannot inflate {tuple(value.shape)} to {tuple(ref.shape)}")
            # output features are ordered (pt, ph, pw, C): the image's (ph, pw, C) block per frame
            value = value.repeat(pt, *([1] * (value.ndim - 1)))
        elif value.shape != ref.shape:
            raise ValueError(f"{key}: image shape {tuple(value.shape)} vs video shape {tuple(ref.shape)}")
        out[key] = value.to(ref.dtype)
    return out
