"""Causal 3D KL-VAE: the compressor family of Open-Sora 1.2+, CogVideoX, Wan and HunyuanVideo."""

from __future__ import annotations

from typing import Sequence

import torch

from lvdm.autoencoders.base import AutoencoderOutput, VideoAutoencoder
from lvdm.autoencoders.layers import Decoder3d, Encoder3d


class CausalVAE3D(VideoAutoencoder):
    """A causal 3D VAE with a diagonal-Gaussian posterior.

    The encoder is causal in time (see :mod:`lvdm.autoencoders.layers`): the first latent frame
    depends on the first frame only, ``1 + 4k`` frames become ``1 + k`` latent frames by default
    and an image is a one-frame video.

    Args:
        in_channels: channels of the video (3 for RGB).
        latent_channels: channels of the latent.
        base_channels: width of the first level.
        channel_mult: width of each level as a multiple of ``base_channels``; one more entry
            than there are down-sampling stages (``max(log2 time, log2 space)``).
        num_res_blocks: residual blocks per level.
        time_downsample: temporal factor (power of two).
        spatial_downsample: spatial factor (power of two), patches included.
        patch_size: space-to-depth patch side taken before the first convolution (LTX-Video
            style; part of ``spatial_downsample``): convolutions run on ``1/p²`` of the pixels.
        kl_weight: weight of the KL term (mean over latent elements) in the training loss.
        causal: causal temporal convolutions (first frame alone); ``False`` gives ``f·k → k``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        time_downsample: int = 4,
        spatial_downsample: int = 8,
        kl_weight: float = 1e-4,
        causal: bool = True,
        patch_size: int = 1,
    ):
        super().__init__()
        self.latent_channels, self.time_downsample, self.spatial_downsample = latent_channels, time_downsample, spatial_downsample
        self.causal, self.kl_weight = causal, kl_weight
        args = (base_channels, tuple(channel_mult), num_res_blocks, time_downsample, spatial_downsample, causal, patch_size)
        self.encoder = Encoder3d(in_channels, 2 * latent_channels, *args)
        self.decoder = Decoder3d(latent_channels, in_channels, *args)

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | video)``, each ``[B, c, t, h, w]``."""
        self.check_video(video)
        mean, logvar = self.encoder(video).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """The posterior mean (deterministic latents for diffusion)."""
        return self.posterior(video)[0]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def forward(self, video: torch.Tensor, sample: bool = True) -> AutoencoderOutput:
        mean, logvar = self.posterior(video)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        return AutoencoderOutput(self.decode(z), {"kl": self.kl_weight * kl},
                                 {"kl": float(kl.detach()), "latent_std": float(mean.detach().std())})
