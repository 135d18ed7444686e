"""The one protocol for turning video into latents and back.

A :class:`Compressor` maps video ``[B, 3, T, H, W]`` in ``[-1, 1]`` to latents ``[B, c, t, h, w]``.
Like NVlabs/edm2 it separates two latent spaces:

* **raw** latents (:meth:`Compressor.encode_raw` / :meth:`Compressor.decode_raw`) are what the
  autoencoder produces; precomputed-latent shards store these, so a shard stays valid when the
  normalisation changes;
* **normalised** latents (:meth:`Compressor.encode` / :meth:`Compressor.decode`),
  ``(raw - shift_factor) * scale_factor``, are what the diffusion model sees (roughly unit
  variance). Scale and shift are one number, or one per latent channel (Wan, Mochi, LTX and
  lvdm's own autoencoders normalise each channel by its mean and standard deviation).

Frame counts: a compressor with ``time_downsample`` ``f`` maps ``f·k`` frames to ``k`` latent
frames, or, when ``causal_time`` (every causal 3D VAE: CogVideoX, Wan, HunyuanVideo, LTX,
Mochi, lvdm's :class:`~lvdm.autoencoders.CausalVAE3D`), encodes the first frame alone and maps
``1 + f·k`` frames to ``1 + k``. :meth:`Compressor.latent_frames` gives the count or a clear
error listing valid ones; :meth:`Compressor.num_frames` is its inverse.

Compressors are frozen: no parameter requires grad, and the module stays in eval mode even
when Lightning calls ``.train()`` on the surrounding LightningModule.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn

from lvdm.autoencoders.base import latent_frames as _latent_frames

Factor = float | Sequence[float]


def _as_float_or_list(value: Factor) -> float | list[float]:
    if isinstance(value, (int, float)):
        return float(value)
    values = [float(v) for v in torch.as_tensor(value, dtype=torch.float64).flatten().tolist()]
    return values[0] if len(values) == 1 else values


class Compressor(nn.Module, ABC):
    """Base class of every video compressor (identity, per-frame 2D VAE, 3D VAE, VQ-VAE).

    Subclasses set the attributes in ``__init__`` (through ``super().__init__``), build their
    modules, call :meth:`_freeze`, and implement :meth:`encode_raw` / :meth:`decode_raw`.

    Attributes:
        latent_channels: channels ``c`` of the latent.
        time_downsample: frames per latent frame (after the first one when ``causal_time``).
        spatial_downsample: pixels per latent pixel along height and width.
        scale_factor: multiplies ``raw - shift_factor`` to give normalised latents: a float,
            or a list of one float per latent channel.
        shift_factor: subtracted from raw latents before scaling (a float or per-channel list).
        causal_time: the first frame is encoded alone (``1 + f·k`` frames → ``1 + k``).
        latent_step: the latent frame count (after the first one when causal) must be a
            multiple of this (2 for CogVideoX, whose decoder takes latent frames in pairs).
    """

    def __init__(
        self,
        latent_channels: int,
        time_downsample: int,
        spatial_downsample: int,
        scale_factor: Factor,
        shift_factor: Factor,
        causal_time: bool = False,
        latent_step: int = 1,
    ):
        super().__init__()
        self.latent_channels = latent_channels
        self.time_downsample = time_downsample
        self.spatial_downsample = spatial_downsample
        self.causal_time = causal_time
        self.latent_step = latent_step
        self.scale_factor = _as_float_or_list(scale_factor)
        self.shift_factor = _as_float_or_list(shift_factor)
        for name, value in (("scale_factor", self.scale_factor), ("shift_factor", self.shift_factor)):
            if isinstance(value, list) and len(value) != latent_channels:
                raise ValueError(f"{name} has {len(value)} entries; expected one float or one per latent channel ({latent_channels})")
        # Non-persistent: they follow .to(device) but leave the state_dict (and old checkpoints) alone.
        self.register_buffer("_scale", self._channel_tensor(self.scale_factor), persistent=False)
        self.register_buffer("_shift", self._channel_tensor(self.shift_factor), persistent=False)

    @staticmethod
    def _channel_tensor(value: float | list[float]) -> torch.Tensor:
        t = torch.tensor(value, dtype=torch.float32)
        return t.view(-1, 1, 1, 1) if t.ndim else t  # [c, 1, 1, 1] broadcasts over [B, c, t, h, w]

    def identity(self) -> dict:
        """What identifies this compressor's raw latents (stored in latent shards, checked by
        :class:`lvdm.data.datamodule.LatentDataModule`): its class, ``config_hash`` — a SHA-256
        over its factors, channels, frame rule and every weight, so two checkpoints of one
        architecture differ — and its scale and shift."""
        digest = hashlib.sha256(json.dumps(
            {"class": self.class_path(), "latent_channels": self.latent_channels, "time_downsample": self.time_downsample,
             "spatial_downsample": self.spatial_downsample, "causal_time": self.causal_time,
             "latent_step": self.latent_step}, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return {"compressor": self.class_path(), "compressor_config_hash": digest.hexdigest()[:16],
                "scale_factor": self.scale_factor, "shift_factor": self.shift_factor}

    def class_path(self) -> str:
        return f"{type(self).__module__}.{type(self).__qualname__}"

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
        return self.normalize(self.encode_raw(video))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent → video, ``decode_raw(z / scale_factor + shift_factor)``."""
        return self.decode_raw(self.denormalize(z))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latent (e.g. read from a latent shard) → normalised latent."""
        return ((raw - self._shift) * self._scale).to(raw.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent → raw latent."""
        return (z / self._scale + self._shift).to(z.dtype)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames``-frame video; a ``ValueError`` naming the valid
        counts when ``num_frames`` has none (see the module docstring)."""
        try:
            return _latent_frames(num_frames, self.time_downsample, self.causal_time, self.latent_step)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None

    def num_frames(self, latent_frames: int) -> int:
        """Frames decoded from ``latent_frames`` latent frames (the inverse of :meth:`latent_frames`)."""
        f, step = self.time_downsample, self.latent_step
        if latent_frames < 1 or (latent_frames - (1 if self.causal_time else 0)) % step:
            raise ValueError(f"{type(self).__name__} cannot decode {latent_frames} latent frames: use "
                             f"{'1 + ' if self.causal_time else ''}{step}j latent frames")
        return 1 + f * (latent_frames - 1) if self.causal_time else f * latent_frames

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent shape ``(c, t, h, w)`` of a ``num_frames × height × width`` video.

        Fails when the frame count is invalid (:meth:`latent_frames`) or a side is not a
        multiple of the spatial factor: the autoencoder would silently crop or pad, and the
        decoded video would not have the requested size.
        """
        t = self.latent_frames(num_frames)
        s = self.spatial_downsample
        for name, size in (("height", height), ("width", width)):
            if size % s:
                raise ValueError(f"{name}={size} is not a multiple of {type(self).__name__}'s downsampling {s}")
        return (self.latent_channels, t, height // s, width // s)
