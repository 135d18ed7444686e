"""Embeddings of the DiT: spacetime patches, positions, timesteps, class labels."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn


def check_latents(x: torch.Tensor, channels: int) -> None:
    """Raise a one-line ``ValueError`` unless ``x`` is ``[B, channels, T, H, W]``."""
    if x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(f"latents must be [batch, {channels} channels, frames, height, width], "
                         f"got shape {list(x.shape)}")


class PatchEmbed3D(nn.Module):
    """Cut a latent ``[B, C, T, H, W]`` into non-overlapping ``(pt, ph, pw)`` spacetime patches
    and project each to ``hidden_size``; returns tokens ``[B, T'*H'*W', hidden]`` in
    (t, h, w) raster order and the grid ``(T', H', W')``."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: tuple[int, int, int]):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        check_latents(x, self.proj.in_channels)
        _, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"latent of shape (T={t}, H={h}, W={w}) is not divisible by the patch size "
                f"{self.patch_size}; pick frames/resolution that are multiples of it"
            )
        x = self.proj(x)
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding ``[len(positions), dim]`` of (possibly fractional) positions."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def split_dims(hidden_size: int) -> tuple[int, int, int]:
    """How a hidden size is shared between the t, h and w axes of the 3D position code:
    a quarter to time, the rest split evenly over height and width; every part even."""
    if hidden_size % 2:
        raise ValueError(f"hidden_size must be even for sin-cos positions, got {hidden_size}")
    dt = (hidden_size // 4) // 2 * 2
    dh = ((hidden_size - dt) // 2) // 2 * 2
    return dt, dh, hidden_size - dt - dh


@lru_cache(maxsize=64)
def _sincos_3d_cached(hidden_size: int, grid: tuple[int, int, int], base: tuple[int, int, int]) -> torch.Tensor:
    dt, dh, dw = split_dims(hidden_size)
    parts = []
    # Positions are scaled to a reference grid (PixArt / Open-Sora style) so that a model
    # trained at one size sees familiar position ranges at another.
    for n, b, d in zip(grid, base, (dt, dh, dw)):
        pos = torch.arange(n, dtype=torch.float64) * (b / n if b else 1.0)
        parts.append(sincos_1d(d, pos))
    et, eh, ew = parts
    t, h, w = grid
    emb = torch.cat(
        [
            et[:, None, None, :].expand(t, h, w, dt),
            eh[None, :, None, :].expand(t, h, w, dh),
            ew[None, None, :, :].expand(t, h, w, dw),
        ],
        dim=-1,
    )
    return emb.reshape(t * h * w, hidden_size).float()


@lru_cache(maxsize=64)
def _sincos_3d_on_device(
    hidden_size: int, grid: tuple[int, int, int], base: tuple[int, int, int], device: torch.device
) -> torch.Tensor:
    # one host-to-device copy per (grid, device): a copy in every forward would be a blocking
    # transfer, i.e. a host sync, in every training step
    return _sincos_3d_cached(hidden_size, grid, base).to(device)


def sincos_pos_embed_3d(
    hidden_size: int,
    grid: tuple[int, int, int],
    base_grid: tuple[int, int, int] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Fixed 3D sin-cos position code ``[T*H*W, hidden]`` (float32) for any grid, computed at
    run time and cached (on ``device`` when given, else on the CPU).

    ``base_grid`` (optional) rescales positions so that a grid of another size spans the same
    position range as the grid the model was trained on (0 disables it for one axis)."""
    base = tuple(base_grid) if base_grid else (0, 0, 0)
    if device is None or torch.device(device).type == "cpu":
        return _sincos_3d_cached(hidden_size, tuple(grid), base)
    return _sincos_3d_on_device(hidden_size, tuple(grid), base, torch.device(device))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DiT/ADM; ``freq_shift``
    divides the exponents by ``half - freq_shift`` (diffusers' ``downscale_freq_shift``: 1 in
    its DiT, 0 in DiT/ADM and PixArt)."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep → vector: sinusoidal code followed by a two-layer MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.frequency_dim, self.freq_shift = frequency_dim, freq_shift
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_dim, freq_shift=self.freq_shift).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class LabelEmbedder(nn.Module):
    """Class label → vector; index ``num_classes`` is the null label used for guidance."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)
