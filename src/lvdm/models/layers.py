"""Layers every lvdm backbone shares (pure torch): attention (self and cross, optional QK-norm),
the MLP, adaLN modulation, the final layer, padding to whole patches, unpatchify and the DiT
initialisation of linears, the patch embedding and identity blocks.

:class:`~lvdm.models.dit.DiT` and :class:`~lvdm.models.stdit.STDiT` both import these, so a fix
here reaches every backbone, and their parameter names (``final_layer.norm``, ``.linear``,
``.scale_shift_table``, ``.adaLN_modulation``) stay those of the published checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lvdm.ops.attention import attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * norm).to(x.dtype) * self.weight


class Attention(nn.Module):
    """Multi-head attention; self-attention by default, cross-attention when ``cross=True``."""

    def __init__(self, dim: int, num_heads: int, cross: bool = False, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        head_dim = dim // num_heads
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        sharded: bool = False,
        rope: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``sharded``: ``x`` is this rank's chunk of a sequence split across ranks (see
        :func:`lvdm.ops.attention.attention`). ``rope``: a rotary position code applied to the
        (normalised) queries and keys ``[B, heads, L, head_dim]`` (:mod:`lvdm.models.rope`)."""
        if self.cross:
            q = self.q(x)
            k, v = self.kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self.q_norm(self._heads(q)), self.k_norm(self._heads(k)), self._heads(v)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = attention(q, k, v, key_mask=key_mask, sharded=sharded)
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class Mlp(nn.Module):
    """Two linears with an activation between (tanh-GELU; ``act=nn.SiLU()`` for HunyuanVideo's
    token refiner and text projections)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, act: nn.Module | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act if act is not None else nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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


def zero_init_block(block: nn.Module, output_projections: list[nn.Linear]) -> None:
    """DiT's identity initialisation of a block: zero gates — the gate rows (every third) of an
    adaLN-single ``scale_shift_table`` (the block is the identity once the shared ``t_block``
    output is zero too) or the whole ``adaLN_modulation`` linear — or, without modulation, zero
    ``output_projections`` (the last linear of each residual branch); a cross-attention's
    output projection is zeroed in every case."""
    if hasattr(block, "scale_shift_table"):
        with torch.no_grad():
            block.scale_shift_table[2::3].zero_()
    elif hasattr(block, "adaLN_modulation"):
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    else:
        for linear in output_projections:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
    if getattr(block, "cross_attn", None) is not None:
        nn.init.zeros_(block.cross_attn.proj.weight)
        nn.init.zeros_(block.cross_attn.proj.bias)
