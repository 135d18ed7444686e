"""Any diffusers 2D VAE (``AutoencoderKL``) applied frame by frame (Open-Sora 1.0 uses SD's VAE)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from lvdm.compressors.base import Compressor
from lvdm.utils import parse_dtype, resolve_pretrained


class FrameVAECompressor(Compressor):
    """Encodes each frame independently with a diffusers ``AutoencoderKL`` (no time compression).

    Frames are folded into the batch and pushed through the VAE ``micro_batch`` frames at a
    time, so memory stays bounded whatever the clip length.

    Args:
        pretrained: local folder written by ``AutoencoderKL.save_pretrained`` (offline), or a
            hub id such as ``"stabilityai/sd-vae-ft-ema"``.
        subfolder: folder inside ``pretrained`` holding the VAE (``"vae"`` for a full
            Stable Diffusion pipeline checkpoint).
        micro_batch: frames encoded or decoded per VAE call.
        scale_factor: latent scale; ``None`` takes the VAE config's ``scaling_factor``.
        shift_factor: latent shift; ``None`` takes the VAE config's ``shift_factor`` (0 if unset).
        sample_posterior: encode to a sample of the posterior instead of its mode (mean).
        dtype: VAE weight dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
    """

    def __init__(
        self,
        pretrained: str,
        subfolder: str | None = None,
        micro_batch: int = 16,
        scale_factor: float | None = None,
        shift_factor: float | None = None,
        sample_posterior: bool = False,
        dtype: str = "float32",
    ):
        location = resolve_pretrained(pretrained, subfolder)
        vae = AutoencoderKL.from_pretrained(location, subfolder=subfolder, torch_dtype=parse_dtype(dtype))
        self._setup(vae, micro_batch, scale_factor, shift_factor, sample_posterior)

    @classmethod
    def from_vae(
        cls,
        vae: AutoencoderKL,
        micro_batch: int = 16,
        scale_factor: float | None = None,
        shift_factor: float | None = None,
        sample_posterior: bool = False,
    ) -> "FrameVAECompressor":
        """Wraps an already built ``AutoencoderKL`` (Python use, tests); the VAE gets frozen."""
        self = cls.__new__(cls)
        self._setup(vae, micro_batch, scale_factor, shift_factor, sample_posterior)
        return self

    def _setup(self, vae, micro_batch, scale_factor, shift_factor, sample_posterior) -> None:
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        config = vae.config
        if scale_factor is None:
            scale_factor = config.scaling_factor
        if shift_factor is None:
            shift_factor = getattr(config, "shift_factor", None) or 0.0
        super().__init__(
            latent_channels=config.latent_channels,
            time_downsample=1,
            spatial_downsample=2 ** (len(config.block_out_channels) - 1),
            scale_factor=scale_factor,
            shift_factor=shift_factor,
        )
        self.vae = vae
        self.micro_batch = micro_batch
        self.sample_posterior = sample_posterior
        self._freeze()

    def _per_frame(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Applies ``fn`` to every frame of ``x [B, C, T, H, W]``, ``micro_batch`` frames a call."""
        b, _, t = x.shape[:3]
        frames = x.transpose(1, 2).flatten(0, 1).to(self.vae.dtype)  # [B*T, C, H, W]
        out = torch.cat([fn(chunk) for chunk in frames.split(self.micro_batch)])
        return out.unflatten(0, (b, t)).transpose(1, 2).to(x.dtype)

    @torch.no_grad()
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        def encode(frames):
            posterior = self.vae.encode(frames).latent_dist
            return posterior.sample() if self.sample_posterior else posterior.mode()

        return self._per_frame(video, encode)

    @torch.no_grad()
    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        return self._per_frame(latent, lambda z: self.vae.decode(z).sample)
