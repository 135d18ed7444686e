"""What every lvdm video autoencoder offers to the training module and the compressor adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def latent_frames(num_frames: int, time_downsample: int, causal: bool, latent_step: int = 1) -> int:
    """Latent frames of ``num_frames`` frames; fails with the valid counts when there are none.

    Causal: the first frame is encoded alone, so ``1 + f·k`` frames → ``1 + k`` latent frames;
    otherwise ``f·k`` → ``k``. ``latent_step`` > 1 further asks ``k`` to be a multiple of it
    (CogVideoX decodes latent frames in pairs after the first: ``1 + 2j`` latent frames).
    """
    f = time_downsample * latent_step
    if causal:
        if num_frames < 1 or (num_frames - 1) % f:
            raise ValueError(f"num_frames={num_frames} is not valid for a causal autoencoder with time_downsample={f}: "
                             f"use 1 + {f}k frames (1, {1 + f}, {1 + 2 * f}, {1 + 4 * f}, ...)")
        return 1 + (num_frames - 1) // time_downsample
    if num_frames < 1 or num_frames % f:
        raise ValueError(f"num_frames={num_frames} is not valid with time_downsample={f}: use a multiple of {f} "
                         f"({f}, {2 * f}, {4 * f}, ...)")
    return num_frames // time_downsample


@dataclass
class AutoencoderOutput:
    """One training forward pass: the reconstruction, the regularisation losses to add to the
    reconstruction loss (already weighted), and statistics to log."""

    reconstruction: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


class VideoAutoencoder(nn.Module):
    """Base of lvdm's trainable video autoencoders (pure torch).

    Subclasses build ``encoder`` and ``decoder`` and implement :meth:`encode`, :meth:`decode`
    and :meth:`forward`.

    Attributes:
        latent_channels: channels of the latent.
        time_downsample: frames per latent frame (after the first one when ``causal``).
        spatial_downsample: pixels per latent pixel along height and width.
        causal: the first frame is encoded alone (``1 + f·k`` frames → ``1 + k``).
    """

    latent_channels: int
    time_downsample: int
    spatial_downsample: int
    causal: bool
    decoder: nn.Module

    def latent_frames(self, num_frames: int) -> int:
        return latent_frames(num_frames, self.time_downsample, self.causal)

    def check_video(self, video: torch.Tensor) -> None:
        """Fails clearly when a video's shape cannot be encoded (names the offending size)."""
        if video.ndim != 5:
            raise ValueError(f"expected a video [B, C, T, H, W], got shape {list(video.shape)}")
        self.latent_frames(video.shape[2])
        s = self.spatial_downsample
        if video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"height and width must be multiples of spatial_downsample={s}, got {list(video.shape[3:])}")

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (the adaptive GAN weight compares gradients there)."""
        return self.decoder.conv_out.conv.weight

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] → deterministic latent ``[B, c, t, h, w]``."""
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, c, t, h, w]`` → video ``[B, 3, T, H, W]``."""
        raise NotImplementedError
