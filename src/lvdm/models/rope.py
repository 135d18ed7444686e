"""Rotary position codes (RoPE) for attention queries and keys.

Two forms share one convention: consecutive pairs of head channels ``(x0, x1), (x2, x3), …``
are rotated by an angle ``position · frequency`` (the convention of ``rotary_embedding_torch``,
which Open-Sora 1.2's STDiT3 uses, and of Wan's complex-number form).

* **1D** over frames (:func:`rope_1d`): STDiT3's temporal attention.
* **3D** over ``(t, h, w)`` (:func:`rope_3d`, Open-Sora 2.0 / Wan / HunyuanVideo): the head
  channels are split into a time part and two equal space parts, each rotated by its own
  coordinate, so a query-key score depends only on the *offset* between the two tokens in
  time, height and width.

A code is a pair ``(cos, sin)`` of ``[N, head_dim]`` tables for N positions; :func:`apply_rope`
applies it to ``[..., N, head_dim]`` queries or keys.
"""

from __future__ import annotations

from functools import lru_cache

import torch


def rope_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The ``dim // 2`` rotation frequencies ``theta^(-2i/dim)`` (float32)."""
    if dim % 2:
        raise ValueError(f"a rotary code needs an even number of channels, got {dim}")
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)


def _tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles ``[N, dim/2]`` → (cos, sin) ``[N, dim]``, each angle repeated for its pair."""
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


@lru_cache(maxsize=64)
def rope_1d(length: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) ``[length, head_dim]`` for positions ``0 … length-1``."""
    with torch.device("cpu"):  # cached: never build it on a default meta / CUDA device
        positions = torch.arange(length, dtype=torch.float32)
        return _tables(positions[:, None] * rope_frequencies(head_dim, theta)[None])


def split_rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of the t, h and w parts of a 3D code (Wan's split): h and w get
    ``2·(head_dim // 6)`` each, time the rest; every part even."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"a 3D rotary code needs an even head_dim of at least 6, got {head_dim}")
    dh = 2 * (head_dim // 6)
    return head_dim - 2 * dh, dh, dh


@lru_cache(maxsize=64)
def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0,
            axes_dims: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) ``[t·h·w, head_dim]`` for the tokens of a ``(t, h, w)`` grid in raster
    order: channels ``[time | height | width]``, each part rotated by its own coordinate.
    ``axes_dims``: the channels of each part (HunyuanVideo: ``(16, 56, 56)``, summing to
    ``head_dim``); None: Wan's split (:func:`split_rope_dims`)."""
    dims = tuple(axes_dims) if axes_dims else split_rope_dims(head_dim)
    if sum(dims) != head_dim:
        raise ValueError(f"rope axes_dims {dims} must sum to the head dimension {head_dim}")
    t, h, w = grid
    with torch.device("cpu"):  # cached: never build it on a default meta / CUDA device
        coords = torch.stack(
            torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1
        ).reshape(-1, 3).float()
        angles = [coords[:, axis, None] * rope_frequencies(dim, theta)[None] for axis, dim in enumerate(dims)]
        return _tables(torch.cat(angles, dim=-1))


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3, …) → (-x1, x0, -x3, x2, …)``: a quarter turn of every channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` ``[..., N, head_dim]`` by the code ``(cos, sin)``
    (``[N, head_dim]``, or any shape that broadcasts), computed in float32 (or float64)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    return (wide * cos + rotate_pairs(wide) * sin).to(x.dtype)
