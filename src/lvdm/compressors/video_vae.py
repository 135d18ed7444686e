"""diffusers' causal 3D video VAEs behind the Compressor protocol.

One adapter serves ``AutoencoderKLCogVideoX``, ``AutoencoderKLWan``, ``AutoencoderKLLTXVideo``,
``AutoencoderKLHunyuanVideo`` and ``AutoencoderKLMochi``. Everything model-specific is read from
the checkpoint's config (and LTX's stored buffers), never from a table of released models:

============================  =================================  =================================================
class                         factors (time, space)              normalisation ``(raw - shift) * scale``
============================  =================================  =================================================
AutoencoderKLCogVideoX        ``temporal_compression_ratio``,    ``scale = scaling_factor``, ``shift = shift_factor``
                              ``2**(len(block_out_channels)-1)``
AutoencoderKLWan              ``scale_factor_temporal/spatial``  per channel: ``shift = latents_mean``,
                              (or from ``temperal_downsample``)  ``scale = 1 / latents_std``
AutoencoderKLLTXVideo         the model's ``*_compression_ratio`` per channel from its ``latents_mean/std`` buffers,
                                                                 ``scale = scaling_factor / latents_std``
AutoencoderKLHunyuanVideo     ``*_compression_ratio``            ``scale = scaling_factor``
AutoencoderKLMochi            ``prod(temporal_expansions)``,     per channel: ``shift = latents_mean``,
                              ``prod(spatial_expansions)``       ``scale = scaling_factor / latents_std``
============================  =================================  =================================================

All five are causal in time: ``1 + f·k`` frames ↔ ``1 + k`` latent frames (``f`` = 4, or 8 for
LTX and 6 for Mochi at their released sizes); CogVideoX further needs an even ``k`` (``1 + 8j``
frames, e.g. its 49), since its decoder takes latent frames in pairs. Other counts fail before
the VAE runs, naming the valid ones.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import diffusers
import torch

from lvdm.compressors.base import Compressor
from lvdm.utils import parse_dtype, resolve_pretrained

# Which diffusers classes a checkpoint's config may name (safetensors/config metadata is data:
# a class outside this list is refused rather than imported).
VIDEO_VAE_CLASSES = ("AutoencoderKLCogVideoX", "AutoencoderKLWan", "AutoencoderKLLTXVideo",
                     "AutoencoderKLHunyuanVideo", "AutoencoderKLMochi")


def _read_class_name(location: str, subfolder: Optional[str]) -> str:
    """``_class_name`` of a local or hub ``config.json`` (fetched alone, before any weights)."""
    # Any of the classes reads a config.json the same way (load_config only parses the JSON).
    config = diffusers.AutoencoderKLWan.load_config(location, subfolder=subfolder)
    name = config.get("_class_name")
    if name not in VIDEO_VAE_CLASSES:
        where = os.path.join(location, subfolder or "", "config.json")
        raise ValueError(f"{where} names class {name!r}; VideoVAECompressor loads one of {VIDEO_VAE_CLASSES} "
                         "(per-frame 2D VAEs: lvdm.compressors.vae2d.FrameVAECompressor)")
    return name


def _factors(vae) -> tuple[int, int]:
    """``(time_downsample, spatial_downsample)`` of a diffusers video VAE, from its config."""
    c, name = vae.config, type(vae).__name__
    if name == "AutoencoderKLCogVideoX":
        return int(c.temporal_compression_ratio), 2 ** (len(c.block_out_channels) - 1)
    if name == "AutoencoderKLWan":
        t = c.scale_factor_temporal or 2 ** sum(c.temperal_downsample)
        s = c.scale_factor_spatial or 2 ** (len(c.dim_mult) - 1)
        return int(t), int(s)
    if name in ("AutoencoderKLLTXVideo", "AutoencoderKLHunyuanVideo"):
        if name == "AutoencoderKLHunyuanVideo":
            return int(c.temporal_compression_ratio), int(c.spatial_compression_ratio)
        return int(vae.temporal_compression_ratio), int(vae.spatial_compression_ratio)
    if name == "AutoencoderKLMochi":
        return math.prod(c.temporal_expansions), math.prod(c.spatial_expansions)
    raise ValueError(f"unsupported video VAE class {name}")


def _normalisation(vae) -> tuple[Any, Any]:
    """``(scale, shift)`` that the model's own pipeline applies to its latents."""
    c, name = vae.config, type(vae).__name__
    scaling = getattr(c, "scaling_factor", None) or 1.0
    if name in ("AutoencoderKLWan", "AutoencoderKLMochi"):
        std = torch.tensor(c.latents_std, dtype=torch.float64)
        return (scaling / std).tolist(), list(c.latents_mean)
    if name == "AutoencoderKLLTXVideo":
        std, mean = vae.latents_std.double(), vae.latents_mean.double()
        return (scaling / std).tolist(), mean.tolist()
    return scaling, getattr(c, "shift_factor", None) or 0.0


class VideoVAECompressor(Compressor):
    """A diffusers causal 3D video VAE (CogVideoX, Wan, LTX-Video, HunyuanVideo, Mochi) as a compressor.

    The class is taken from the checkpoint's ``config.json`` (one of ``VIDEO_VAE_CLASSES``);
    factors, latent channels and the latent normalisation come from its config (see the
    module docstring for each model's rule).

    Args:
        pretrained: local folder written by ``save_pretrained`` (offline), or a hub id such as
            ``"THUDM/CogVideoX-2b"`` (with ``subfolder="vae"``).
        subfolder: folder inside ``pretrained`` holding the VAE (``"vae"`` for a full pipeline).
        dtype: weight dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        sample_posterior: encode to a posterior sample instead of its mode.
        tiling: decode (and encode) in overlapping spatial tiles blended at the seams, and in
            temporal tiles for LTX and HunyuanVideo (diffusers' ``enable_tiling``): bounded
            memory for large and long videos.
        tiling_options: keyword arguments of the class's ``enable_tiling`` (tile sizes and
            strides in pixels, e.g. ``{"tile_sample_min_height": 256, "tile_sample_stride_height": 192}``;
            CogVideoX takes ``tile_overlap_factor_*`` instead of strides).
        slicing: encode/decode one video of the batch at a time (``enable_slicing``).
        framewise: Mochi only: encode and decode in temporal chunks (its framewise mode).
        scale_factor: override the latent scale (float or per-channel list); ``None``: the model's.
        shift_factor: override the latent shift; ``None``: the model's.
    """

    def __init__(
        self,
        pretrained: str,
        subfolder: Optional[str] = None,
        dtype: str = "float32",
        sample_posterior: bool = False,
        tiling: bool = False,
        tiling_options: Optional[dict] = None,
        slicing: bool = False,
        framewise: bool = False,
        scale_factor: Optional[float | list[float]] = None,
        shift_factor: Optional[float | list[float]] = None,
    ):
        location = resolve_pretrained(pretrained, subfolder)
        cls = getattr(diffusers, _read_class_name(location, subfolder))
        vae = cls.from_pretrained(location, subfolder=subfolder, torch_dtype=parse_dtype(dtype))
        self._setup(vae, sample_posterior, tiling, tiling_options, slicing, framewise, scale_factor, shift_factor)

    @classmethod
    def from_vae(cls, vae, sample_posterior: bool = False, tiling: bool = False, tiling_options: Optional[dict] = None,
                 slicing: bool = False, framewise: bool = False, scale_factor=None, shift_factor=None) -> "VideoVAECompressor":
        """Wraps an already built diffusers video VAE (Python use, tests); the VAE gets frozen."""
        if type(vae).__name__ not in VIDEO_VAE_CLASSES:
            raise ValueError(f"{type(vae).__name__} is not one of {VIDEO_VAE_CLASSES}")
        self = cls.__new__(cls)
        self._setup(vae, sample_posterior, tiling, tiling_options, slicing, framewise, scale_factor, shift_factor)
        return self

    def _setup(self, vae, sample_posterior, tiling, tiling_options, slicing, framewise, scale_factor, shift_factor) -> None:
        time_downsample, spatial_downsample = _factors(vae)
        scale, shift = _normalisation(vae)
        super().__init__(
            latent_channels=int(vae.config.latent_channels if hasattr(vae.config, "latent_channels") else vae.config.z_dim),
            time_downsample=time_downsample,
            spatial_downsample=spatial_downsample,
            scale_factor=scale if scale_factor is None else scale_factor,
            shift_factor=shift if shift_factor is None else shift_factor,
            causal_time=True,
            # CogVideoX decodes latent frames in pairs after an odd first group: an even count
            # decodes to the wrong number of frames (2 latent frames → 8, not 5).
            latent_step=2 if type(vae).__name__ == "AutoencoderKLCogVideoX" else 1,
        )
        self.vae = vae
        self.sample_posterior = sample_posterior
        if tiling:
            vae.enable_tiling(**(tiling_options or {}))
        elif tiling_options:
            raise ValueError("tiling_options given without tiling=True")
        if slicing:
            vae.enable_slicing()
        if framewise:
            if type(vae).__name__ != "AutoencoderKLMochi":
                raise ValueError(f"framewise applies to AutoencoderKLMochi only, not {type(vae).__name__}")
            vae._enable_framewise_encoding()
            vae._enable_framewise_decoding()
        self._freeze()

    def config_dict(self) -> dict:
        """The VAE's config (what identifies the compressor in latent shards)."""
        return {"class": type(self.vae).__name__, **{k: v for k, v in self.vae.config.items() if not k.startswith("_")}}

    @torch.no_grad()
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        self.latent_shape(*video.shape[2:])  # a clear error for invalid frame counts or sizes
        posterior = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        latent = posterior.sample() if self.sample_posterior else posterior.mode()
        return latent.to(video.dtype)

    @torch.no_grad()
    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        self.num_frames(latent.shape[2])  # a clear error for latent frame counts the VAE cannot decode
        return self.vae.decode(latent.to(self.vae.dtype)).sample.to(latent.dtype)
