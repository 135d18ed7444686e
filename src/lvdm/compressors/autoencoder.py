"""A trained lvdm autoencoder (:mod:`lvdm.autoencoders`) as a frozen compressor."""

from __future__ import annotations

from typing import Literal, Optional

import torch

from lvdm.autoencoders.base import VideoAutoencoder
from lvdm.compressors.base import Compressor


class AutoencoderCompressor(Compressor):
    """lvdm's causal 3D VAE or video VQ-VAE, loaded from what ``lvdm fit`` wrote.

    The autoencoder is taken from an :class:`lvdm.training.autoencoder_module.AutoencoderModule`
    checkpoint (a ``.ckpt``, a DeepSpeed directory or an exported ``.safetensors``, read by the
    one safe loader :func:`lvdm.checkpoints.load.load_module`). Factors, channels and causality come
    from the autoencoder; the latent normalisation is per channel, from the latent mean and
    standard deviation the module measured on its validation set (``shift = mean``,
    ``scale = 1 / std``), unless given.

    Args:
        checkpoint: path of the training checkpoint or exported weights.
        weights: ``"auto"`` (the EMA weights when stored), ``"ema"`` or ``"raw"``.
        normalize: use the stored per-channel latent statistics (``False``: scale 1, shift 0).
        scale_factor: override the scale (a float or one per latent channel).
        shift_factor: override the shift.
    """

    def __init__(
        self,
        checkpoint: str,
        weights: Literal["auto", "ema", "raw"] = "auto",
        normalize: bool = True,
        scale_factor: Optional[float | list[float]] = None,
        shift_factor: Optional[float | list[float]] = None,
    ):
        from lvdm.checkpoints.load import load_module  # the loader rebuilds a LightningModule (upper layer)

        loaded = load_module(checkpoint, weights=weights)
        module = loaded.module
        autoencoder = getattr(module, "autoencoder", None)
        if not isinstance(autoencoder, VideoAutoencoder):
            raise ValueError(f"{checkpoint!r} holds a {type(module).__name__}, not an AutoencoderModule "
                             "(train one with recipes/autoencoder/)")
        self.source = loaded.describe()
        mean, std = module.latent_mean, module.latent_std
        self._setup(autoencoder, (1.0 / std).tolist() if normalize else 1.0, mean.tolist() if normalize else 0.0,
                    scale_factor, shift_factor)

    @classmethod
    def from_autoencoder(cls, autoencoder: VideoAutoencoder, scale_factor: float | list[float] = 1.0,
                         shift_factor: float | list[float] = 0.0) -> "AutoencoderCompressor":
        """Wraps an autoencoder object (Python use, tests); it gets frozen."""
        self = cls.__new__(cls)
        self.source = "a Python object"
        self._setup(autoencoder, scale_factor, shift_factor, None, None)
        return self

    def _setup(self, autoencoder, scale, shift, scale_factor, shift_factor) -> None:
        super().__init__(
            latent_channels=autoencoder.latent_channels,
            time_downsample=autoencoder.time_downsample,
            spatial_downsample=autoencoder.spatial_downsample,
            scale_factor=scale if scale_factor is None else scale_factor,
            shift_factor=shift if shift_factor is None else shift_factor,
            causal_time=autoencoder.causal,
        )
        self.autoencoder = autoencoder
        self._freeze()

    @torch.no_grad()
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        self.latent_shape(*video.shape[2:])
        return self.autoencoder.encode(video)

    @torch.no_grad()
    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        self.num_frames(latent.shape[2])
        return self.autoencoder.decode(latent)
