"""Layers every lvdm backbone shares (pure torch): adaLN modulation, the final layer,
unpatchify and the DiT initialisation of linears and the patch embedding.

:class:`~lvdm.models.dit.DiT` and :class:`~lvdm.models.stdit.STDiT` both import these, so a fix
here reaches every backbone, and their parameter names (``final_layer.norm``, ``.linear``,
``.scale_shift_table``, ``.adaLN_modulation``) stay those of the published checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _per_token(x: torch.Tensor, mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``x`` ``[B, N, D]`` and a modulation ``[B, D]`` (one per sample) or ``[B, F, D]``
    (one per latent frame of ``N = F·hw`` t-major tokens; ``F = 1``: per sample), reshaped to
    broadcast. Tokens laid out per frame, ``[B, T, S, D]`` (STDiT), take a modulation that
    already broadcasts (``[B, T or 1, 1, D]``) as is."""
    if x.ndim == 4:
        return x, mod
    if mod.ndim == 2:
        return x, mod[:, None]
    return x.unflatten(1, (mod.shape[1], -1)), mod[:, :, None]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x · (1 + scale) + shift`` per sample or per frame (see :func:`_per_token`)."""
    xs, shift = _per_token(x, shift)
    return (xs * (1 + _per_token(x, scale)[1]) + shift).reshape(x.shape)


def gated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """adaLN-zero's gate ``gate · x`` per sample or per frame."""
    xs, gate = _per_token(x, gate)
    return (gate * xs).reshape(x.shape)


class FinalLayer(nn.Module):
    """Norm, (shift, scale) modulation from the conditioning vector ``c``, linear to patches.

    Per-block adaLN regresses (shift, scale) from ``c`` with its own linear; ``adaln_single``
    (PixArt's ``T2IFinalLayer``, Open-Sora's STDiT) adds a learned table ``[2, D]`` to ``c``
    instead. ``x`` is ``[B, N, D]`` t-major tokens; ``c`` ``[B, D]``, or ``[B, F, D]`` per
    frame (``F = 1``: per sample)."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int, modulated: bool,
                 adaln_single: bool = False):
        super().__init__()
        self.modulated = modulated
        self.adaln_single = adaln_single and modulated
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=not modulated, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        if self.adaln_single:
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        elif modulated:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if self.adaln_single:
            shift, scale = (self.scale_shift_table.to(c.dtype) + c.unsqueeze(-2)).unbind(-2)
            x = modulate(x, shift, scale)
        elif self.modulated:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.linear(x)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch_size: Sequence[int],
               out_channels: int) -> torch.Tensor:
    """Patch tokens ``[B, t·h·w (or t, h·w), pt·ph·pw·C]`` (t-major) → ``[B, C, t·pt, h·ph, w·pw]``."""
    b = tokens.shape[0]
    pt, ph, pw = patch_size
    t, h, w = grid
    x = tokens.reshape(b, t, h, w, pt, ph, pw, out_channels)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, out_channels, t * pt, h * ph, w * pw)


def pad_to_patches(x: torch.Tensor, patch_size: Sequence[int], time: bool = True) -> torch.Tensor:
    """Latents ``[B, C, T, H, W]`` zero-padded at the end of W, H (and T, with ``time``) to whole
    patches, as Open-Sora 1.2's ``PatchEmbed3D`` pads; the model crops its output back with
    ``out[..., :T, :H, :W]`` (STDiT3's ``unpatchify``). Whole-patch latents are returned as is."""
    _, _, t, h, w = x.shape
    pt, ph, pw = patch_size
    pad = (0, -w % pw, 0, -h % ph, 0, -t % pt if time else 0)
    return F.pad(x, pad) if any(pad) else x


def init_linears_and_patches(model: nn.Module) -> None:
    """DiT's base initialisation: Xavier-uniform linears with zero bias, and the patch
    embedding's convolution initialised as the linear it is (Xavier over its flattened kernel)."""

    def _basic(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    model.apply(_basic)
    w = model.x_embedder.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)


def zero_final_layer(final_layer: FinalLayer) -> None:
    """Zero the output projection (and a per-block adaLN's regression) so the model predicts 0."""
    if final_layer.modulated and not final_layer.adaln_single:
        nn.init.zeros_(final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(final_layer.adaLN_modulation[-1].bias)
    nn.init.zeros_(final_layer.linear.weight)
    nn.init.zeros_(final_layer.linear.bias)
