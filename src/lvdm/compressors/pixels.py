"""Identity compressor: diffusion directly in pixel space (tiny demos, tests, baselines)."""

from __future__ import annotations

import torch

from lvdm.compressors.base import Compressor


class PixelCompressor(Compressor):
    """The identity: latents are the pixels (no downsampling, scale 1, shift 0).

    Args:
        channels: channels of the video (3 for RGB).
    """

    def __init__(self, channels: int = 3):
        super().__init__(
            latent_channels=channels, time_downsample=1, spatial_downsample=1, scale_factor=1.0, shift_factor=0.0
        )
        self._freeze()

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        return latent
