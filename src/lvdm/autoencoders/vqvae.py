"""Video VQ-VAE (VideoGPT-style 3D convolutions) with an EMA codebook and dead-code restart."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lvdm.autoencoders.base import AutoencoderOutput, VideoAutoencoder
from lvdm.autoencoders.layers import Decoder3d, Encoder3d


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantisation whose codebook follows an exponential moving average of the
    vectors assigned to each code (van den Oord et al. 2017, appendix; no codebook gradient).

    A code whose EMA assignment count falls below ``restart_threshold`` is *dead*: in training
    it is moved onto a random encoder output of the current batch (Jukebox / SoundStream
    restart), so the whole codebook stays in use. The codebook is initialised from the first
    training batch's encoder outputs.

    The codebook lives in buffers: under DDP each replica updates its own copy from its own
    batch and DDP's buffer broadcast keeps rank 0's (this layer imports no torch.distributed).

    Args:
        num_codes: codebook size.
        dim: code dimension (the encoder's output channels).
        decay: EMA decay of the counts and sums.
        commitment: weight of the commitment loss ``||z_e - sg(z_q)||²``.
        restart_threshold: EMA count under which a code is restarted (0 disables restarts).
        eps: Laplace smoothing of the counts.
    """

    def __init__(self, num_codes: int = 512, dim: int = 8, decay: float = 0.99, commitment: float = 0.25,
                 restart_threshold: float = 1.0, eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.num_codes, self.dim, self.decay, self.commitment = num_codes, dim, decay, commitment
        self.restart_threshold, self.eps = restart_threshold, eps
        self.register_buffer("codebook", torch.randn(num_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", torch.zeros(num_codes, dim))
        self.register_buffer("initialized", torch.tensor(False))

    def indices(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of each row of ``flat [N, dim]``."""
        distance = flat.square().sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.square().sum(1)
        return distance.argmin(1)

    def _gather(self, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Codes ``idx [N]`` laid out as ``like [B, dim, t, h, w]``."""
        return self.codebook[idx].view(like.shape[0], *like.shape[2:], self.dim).movedim(-1, 1).to(like.dtype)

    @torch.no_grad()
    def snap(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, dim, t, h, w]`` replaced by its nearest codes (no statistics, no update)."""
        return self._gather(self.indices(z.movedim(1, -1).reshape(-1, self.dim)), z)

    def _sample_rows(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        picks = torch.randint(0, flat.shape[0], (count,), device=flat.device)
        return flat[picks]

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> int:
        if not bool(self.initialized):
            self.codebook.copy_(self._sample_rows(flat, self.num_codes))
            self.embed_sum.copy_(self.codebook)
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(True)
            idx = self.indices(flat)
        onehot = F.one_hot(idx, self.num_codes).type(flat.dtype)
        self.cluster_size.lerp_(onehot.sum(0), 1 - self.decay)
        self.embed_sum.lerp_(onehot.t() @ flat, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < self.restart_threshold
        restarts = int(dead.sum())
        if restarts:
            fresh = self._sample_rows(flat, restarts)
            self.codebook[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0
        return restarts

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``z [B, dim, t, h, w]`` → (quantised ``z`` with straight-through gradient, commitment
        loss (weighted), statistics: batch usage fraction, perplexity, restarts)."""
        flat = z.movedim(1, -1).reshape(-1, self.dim)
        restarts = 0
        if self.training:
            restarts = self._update(flat.detach().float(), self.indices(flat.detach()))
        idx = self.indices(flat.detach())
        quantized = self._gather(idx, z)
        loss = self.commitment * F.mse_loss(z, quantized.detach())
        counts = torch.bincount(idx, minlength=self.num_codes).float()
        p = counts / counts.sum()
        stats = {"usage": float((counts > 0).float().mean()),
                 "perplexity": float(torch.exp(-(p * (p + 1e-10).log()).sum())), "restarts": float(restarts)}
        return z + (quantized - z).detach(), loss, stats


class VideoVQVAE(VideoAutoencoder):
    """A video VQ-VAE: 3D-convolutional encoder, EMA-codebook quantiser, decoder.

    Latents for diffusion are the quantised code vectors ``[B, latent_channels, t, h, w]``;
    :meth:`decode` snaps its input to the nearest codes first.

    Args:
        in_channels: channels of the video.
        latent_channels: code dimension.
        num_codes: codebook size.
        base_channels: width of the first level.
        channel_mult: width of each level (one more entry than down-sampling stages).
        num_res_blocks: residual blocks per level.
        time_downsample: temporal factor (power of two).
        spatial_downsample: spatial factor (power of two), patches included.
        patch_size: space-to-depth patch side taken before the first convolution (LTX-Video
            style; part of ``spatial_downsample``): convolutions run on ``1/p²`` of the pixels.
        commitment: weight of the commitment loss.
        decay: codebook EMA decay.
        restart_threshold: EMA count under which a code is restarted (0: never).
        causal: causal temporal convolutions (``1 + f·k → 1 + k`` frames) instead of
            VideoGPT's symmetric ones (``f·k → k``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 8,
        num_codes: int = 512,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        time_downsample: int = 4,
        spatial_downsample: int = 4,
        commitment: float = 0.25,
        decay: float = 0.99,
        restart_threshold: float = 1.0,
        causal: bool = False,
        patch_size: int = 1,
    ):
        super().__init__()
        self.latent_channels, self.time_downsample, self.spatial_downsample = latent_channels, time_downsample, spatial_downsample
        self.causal = causal
        args = (base_channels, tuple(channel_mult), num_res_blocks, time_downsample, spatial_downsample, causal, patch_size)
        self.encoder = Encoder3d(in_channels, latent_channels, *args)
        self.quantizer = EMAVectorQuantizer(num_codes, latent_channels, decay, commitment, restart_threshold)
        self.decoder = Decoder3d(latent_channels, in_channels, *args)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """The quantised code vectors of ``video``."""
        self.check_video(video)
        return self.quantizer.snap(self.encoder(video))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.snap(latent))

    def forward(self, video: torch.Tensor) -> AutoencoderOutput:
        self.check_video(video)
        quantized, commitment, stats = self.quantizer(self.encoder(video))
        return AutoencoderOutput(self.decoder(quantized), {"commitment": commitment}, stats)
