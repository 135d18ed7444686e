"""The one protocol for turning video into latents and back.

A :class:`Compressor` maps video ``[B, 3, T, H, W]`` in ``[-1, 1]`` to latents ``[B, c, t, h, w]``.
Like NVlabs/edm2 it separates two latent spaces:

* **raw** latents (:meth:`Compressor.encode_raw` / :meth:`Compressor.decode_raw`) are what the
  autoencoder produces; precomputed-latent shards store these, so a shard stays valid when the
  normalisation changes;
* **normalised** latents (:meth:`Compressor.encode` / :meth:`Compressor.decode`),
  ``(raw - shift_factor) * scale_factor``, are what the diffusion model sees (roughly unit
  variance).

Compressors are frozen: no parameter requires grad, and the module stays in eval mode even
when Lightning calls ``.train()`` on the surrounding LightningModule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

class Compressor(nn.Module, ABC):
    """Base class of every video compressor (identity, per-frame 2D VAE, 3D VAE, VQ-VAE).

    Subclasses set the attributes in ``__init__`` (through ``super().__init__``), build their
    modules, call :meth:`_freeze`, and implement :meth:`encode_raw` / :meth:`decode_raw`.

    Attributes:
        latent_channels: channels ``c`` of the latent.
        time_downsample: frames per latent frame.
        spatial_downsample: pixels per latent pixel along height and width.
        scale_factor: multiplies ``raw - shift_factor`` to give normalised latents.
        shift_factor: subtracted from raw latents before scaling.
    """

    def __init__(
        self,
        latent_channels: int,
        time_downsample: int,
        spatial_downsample: int,
        scale_factor: float,
        shift_factor: float,
    ):
        super().__init__()
        self.latent_channels = latent_channels
        self.time_downsample = time_downsample
        self.spatial_downsample = spatial_downsample
        self.scale_factor = float(scale_factor)
        self.shift_factor = float(shift_factor)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Compressor":
        # Frozen: Lightning calls .train() on the whole LightningModule each epoch; stay in eval.
        return super().train(False)

    @abstractmethod
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in ``[-1, 1]`` → raw latent ``[B, c, t, h, w]``."""

    @abstractmethod
    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent ``[B, c, t, h, w]`` → video ``[B, 3, T, H, W]`` (about ``[-1, 1]``)."""

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video → normalised latent ``(encode_raw(video) - shift_factor) * scale_factor``."""
        return (self.encode_raw(video) - self.shift_factor) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent → video, ``decode_raw(z / scale_factor + shift_factor)``."""
        return self.decode_raw(z / self.scale_factor + self.shift_factor)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latent (e.g. read from a latent shard) → normalised latent."""
        return (raw - self.shift_factor) * self.scale_factor

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent shape ``(c, t, h, w)`` of a ``num_frames × height × width`` video.

        Fails when a size is not a multiple of its downsampling factor: the autoencoder would
        silently crop or pad, and the decoded video would not have the requested size.
        """
        for name, size, factor in (
            ("num_frames", num_frames, self.time_downsample),
            ("height", height, self.spatial_downsample),
            ("width", width, self.spatial_downsample),
        ):
            if size % factor:
                raise ValueError(f"{name}={size} is not a multiple of {type(self).__name__}'s downsampling {factor}")
        s = self.spatial_downsample
        return (self.latent_channels, num_frames // self.time_downsample, height // s, width // s)
