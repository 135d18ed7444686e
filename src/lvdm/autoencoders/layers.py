"""Building blocks of lvdm's video autoencoders: 3D convolutions that are causal in time or
not, per-frame normalisation, residual blocks, and the down/up-sampling stages.

Causality (CogVideoX / Wan / Open-Sora 1.2 style): a causal layer's output frame ``t`` depends
only on input frames ``<= t``. Temporal convolutions pad on the left with copies of the first
frame, normalisation is per frame, and temporal down-sampling keeps the first frame alone and
pools the remaining frames in pairs, so ``1 + 2m`` frames become ``1 + m``. Stacked, ``1 + 4k``
frames become ``1 + k`` latent frames and one image is a one-frame video.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is at most ``max_groups``."""
    return max(g for g in range(1, max_groups + 1) if channels % g == 0)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame separately (statistics never mix frames, so it stays causal)."""

    def __init__(self, channels: int):
        super().__init__(group_count(channels), channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        y = super().forward(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (b, t)).transpose(1, 2)


class VideoConv3d(nn.Module):
    """A stride-1 3D convolution keeping ``T, H, W``; zero padding in space, replicated edge
    frames in time: on the left only when ``causal`` (output frame ``t`` sees frames ``<= t``),
    on both sides otherwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3, causal: bool = True):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.time_pad = (kt - 1, 0) if causal else ((kt - 1) // 2, kt // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.time_pad
        if left or right:
            x = torch.cat([x[:, :, :1].expand(-1, -1, left, -1, -1), x, x[:, :, -1:].expand(-1, -1, right, -1, -1)], dim=2)
        return self.conv(x)


class ResBlock3d(nn.Module):
    """norm → SiLU → conv → norm → SiLU → conv, plus a (1×1×1 when channels change) skip."""

    def __init__(self, in_channels: int, out_channels: int, causal: bool):
        super().__init__()
        self.norm1 = FrameGroupNorm(in_channels)
        self.conv1 = VideoConv3d(in_channels, out_channels, 3, causal)
        self.norm2 = FrameGroupNorm(out_channels)
        self.conv2 = VideoConv3d(out_channels, out_channels, 3, causal)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halves ``H, W`` (a stride-2 per-frame convolution) and/or ``T`` (average of frame pairs;
    when causal the first frame is kept alone: ``1 + 2m → 1 + m``, otherwise ``2m → m``)."""

    def __init__(self, channels: int, space: bool, time: bool, causal: bool):
        super().__init__()
        self.time, self.causal = time, causal
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2)) if space else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(F.pad(x, (0, 1, 0, 1)))
        if self.time:
            head, rest = (x[:, :, :1], x[:, :, 1:]) if self.causal else (x[:, :, :0], x)
            if rest.shape[2] % 2:
                raise ValueError(f"temporal down-sampling got {x.shape[2]} frames; expected "
                                 f"{'an odd number' if self.causal else 'an even number'}")
            rest = rest.unflatten(2, (rest.shape[2] // 2, 2)).mean(3)
            x = torch.cat([head, rest], dim=2)
        return x


class Upsample(nn.Module):
    """Doubles ``H, W`` (nearest) and/or ``T`` (each frame repeated; when causal the first frame
    stays alone: ``1 + m → 1 + 2m``), then a 3×3×3 convolution."""

    def __init__(self, channels: int, space: bool, time: bool, causal: bool):
        super().__init__()
        self.space, self.time, self.causal = space, time, causal
        self.conv = VideoConv3d(channels, channels, 3, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time:
            head, rest = (x[:, :, :1], x[:, :, 1:]) if self.causal else (x[:, :, :0], x)
            x = torch.cat([head, rest.repeat_interleave(2, dim=2)], dim=2)
        if self.space:
            x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(x)


def _log2_factor(name: str, factor: int) -> int:
    stages = int(round(math.log2(factor))) if factor >= 1 else -1
    if factor < 1 or 2**stages != factor:
        raise ValueError(f"{name} must be a power of two (1, 2, 4, 8, ...), got {factor}")
    return stages


def stage_plan(time_downsample: int, spatial_downsample: int, channel_mult: tuple[int, ...]) -> list[tuple[bool, bool]]:
    """``(space, time)`` down-sampling of each encoder stage: spatial stages first, temporal
    ones last (the deepest, cheapest levels, as Wan's VAE). One stage per level change, so
    ``len(channel_mult)`` must be ``max(log2 factors) + 1``."""
    s = _log2_factor("spatial_downsample", spatial_downsample)
    t = _log2_factor("time_downsample", time_downsample)
    n = max(s, t)
    if len(channel_mult) != n + 1:
        raise ValueError(f"channel_mult needs {n + 1} entries (one per level) for time_downsample={time_downsample} "
                         f"and spatial_downsample={spatial_downsample}, got {len(channel_mult)}: {tuple(channel_mult)}")
    return [(i < s, i >= n - t) for i in range(n)]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` → ``[B, C·p·p, T, H/p, W/p]`` (space-to-depth per frame)."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)


def _spatial_stages(spatial_downsample: int, patch_size: int) -> int:
    if patch_size < 1 or spatial_downsample % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide spatial_downsample={spatial_downsample}")
    return spatial_downsample // patch_size


class Encoder3d(nn.Module):
    """Video ``[B, in, T, H, W]`` → ``[B, out, t, H/s, W/s]``: optional space-to-depth patches
    (LTX-Video's ``patch_size``: the convolutions then run at ``1/p²`` of the pixels, which is
    what makes CPU training affordable), a convolution in, per level ``num_res_blocks``
    residual blocks then a down-sampling stage, two middle blocks, out."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, time_downsample: int, spatial_downsample: int, causal: bool, patch_size: int = 1):
        super().__init__()
        self.patch_size = patch_size
        plan = stage_plan(time_downsample, _spatial_stages(spatial_downsample, patch_size), channel_mult)
        widths = [base_channels * m for m in channel_mult]
        self.conv_in = VideoConv3d(in_channels * patch_size**2, widths[0], 3, causal)
        blocks: list[nn.Module] = []
        for level, (space, time) in enumerate(plan):
            for i in range(num_res_blocks):
                blocks.append(ResBlock3d(widths[level], widths[level], causal))
            blocks.append(Downsample(widths[level], space, time, causal))
            blocks.append(ResBlock3d(widths[level], widths[level + 1], causal))
        blocks += [ResBlock3d(widths[-1], widths[-1], causal) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(widths[-1])
        self.conv_out = VideoConv3d(widths[-1], out_channels, 3, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(patchify(x, self.patch_size))))))


class Decoder3d(nn.Module):
    """Mirror of :class:`Encoder3d`: latent ``[B, in, t, h, w]`` → video ``[B, out, T, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, time_downsample: int, spatial_downsample: int, causal: bool, patch_size: int = 1):
        super().__init__()
        self.patch_size = patch_size
        plan = stage_plan(time_downsample, _spatial_stages(spatial_downsample, patch_size), channel_mult)
        widths = [base_channels * m for m in channel_mult]
        self.conv_in = VideoConv3d(in_channels, widths[-1], 3, causal)
        blocks: list[nn.Module] = [ResBlock3d(widths[-1], widths[-1], causal) for _ in range(2)]
        for level in reversed(range(len(plan))):
            space, time = plan[level]
            blocks.append(ResBlock3d(widths[level + 1], widths[level], causal))
            blocks.append(Upsample(widths[level], space, time, causal))
            blocks += [ResBlock3d(widths[level], widths[level], causal) for _ in range(num_res_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(widths[0])
        self.conv_out = VideoConv3d(widths[0], out_channels * patch_size**2, 3, causal)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(z))))), self.patch_size)
