"""The analytic FLOP models of lvdm's backbones (pure torch; :mod:`lvdm.perf.step_flops` builds the
training, sampling and MFU numbers on top of them).

Convention (``torch.utils.flop_counter.FlopCounterMode``'s, nanoGPT's, PaLM's): ``[m, k] @ [k,
n]`` costs ``2·m·n·k``; a convolution ``2 · output elements · in_channels · kernel volume``;
attention ``4 · Lq · Lk · head_dim · heads``. Elementwise work is not counted. Each model
returns its forward FLOPs per component; the components named in :data:`BLOCK_PARTS` are the
ones inside the checkpoint units (recomputed by activation checkpointing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: Components computed inside the blocks (what activation checkpointing recomputes).
BLOCK_PARTS = ("adaln", "qkv_proj", "self_attention", "cross_proj", "cross_attention", "mlp")


def mm(m: int, k: int, n: int) -> int:
    """FLOPs of ``[m, k] @ [k, n]``."""
    return 2 * m * k * n


def patch_grid(patch_size: Sequence[int], latent_thw: Sequence[int]) -> tuple[int, int, int]:
    """Token grid ``(T', H', W')`` of a latent of ``(T, H, W)`` frames × rows × columns; the
    backbones pad a latent to whole patches, so a partial patch counts as one."""
    return tuple(-(-int(n) // int(p)) for n, p in zip(latent_thw, patch_size))


def _add(out: dict[str, int], name: str, flops: int) -> None:
    out[name] = out.get(name, 0) + int(flops)


def attention_flops(out: dict[str, int], b: int, groups: int, length: int, d: int, keys: int | None = None) -> None:
    """Self-attention (``keys`` None) over ``groups`` sequences of ``length`` tokens per sample:
    q/k/v and output projections plus scores and values."""
    _add(out, "qkv_proj", b * groups * (mm(length, d, 3 * d) + mm(length, d, d)))
    _add(out, "self_attention", b * groups * 4 * length * length * d)


def cross_attention_flops(out: dict[str, int], b: int, n: int, text_len: int, d: int) -> None:
    """Cross-attention of ``n`` tokens to ``text_len`` text tokens (q, kv, output, attention)."""
    _add(out, "cross_proj", b * (mm(n, d, d) + mm(text_len, d, 2 * d) + mm(n, d, d)))
    _add(out, "cross_attention", b * 4 * n * text_len * d)


def mlp_flops(out: dict[str, int], b: int, n: int, d: int, hidden: int) -> None:
    _add(out, "mlp", b * (mm(n, d, hidden) + mm(n, hidden, d)))


@dataclass(frozen=True)
class DiTShape:
    """The dimensions of a :class:`~lvdm.models.dit.DiT` that its FLOPs depend on (read from a
    model, or built from a size preset without allocating one); see ``DiT`` for the fields."""

    hidden_size: int
    depth: int
    num_heads: int
    mlp_hidden: int
    patch_size: tuple[int, int, int]
    in_channels: int
    out_channels: int
    conditioning: str
    layout: str
    context_dim: int = 0
    num_classes: int = 0
    num_params: int = 0
    block_params: int = 0
    frequency_dim: int = 256
    adaln_single: bool = False

    @classmethod
    def from_model(cls, model: Any) -> DiTShape:
        """Read the shape of a built ``DiT`` (also works on a ``meta``-device model)."""
        if not hasattr(model, "conditioning") or not hasattr(model, "layout"):
            raise TypeError(f"expected an lvdm DiT, got {type(model).__name__}")
        blocks = model.blocks
        return cls(
            hidden_size=model.hidden_size, depth=len(blocks), num_heads=model.num_heads,
            mlp_hidden=blocks[0].mlp.fc1.out_features if len(blocks) else 0,
            patch_size=tuple(model.patch_size), in_channels=model.in_channels, out_channels=model.out_channels,
            conditioning=model.conditioning, layout=model.layout, context_dim=model.context_dim,
            num_classes=model.num_classes, num_params=sum(p.numel() for p in model.parameters()),
            block_params=sum(p.numel() for p in blocks[0].parameters()) if len(blocks) else 0,
            frequency_dim=model.t_embedder.frequency_dim, adaln_single=model.adaln_single,
        )

    @classmethod
    def from_kwargs(cls, **dit_kwargs) -> DiTShape:
        """Build the shape from ``DiT`` constructor arguments on the ``meta`` device (no memory,
        no initialisation cost), so parameter counts are exact for any size."""
        from lvdm.models.dit import DiT  # dit.py imports this module

        with torch.device("meta"):
            model = DiT(**dit_kwargs)
        return cls.from_model(model)

    def latent_grid(self, latent_thw: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of a latent of ``(T, H, W)``."""
        return patch_grid(self.patch_size, latent_thw)

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """FLOPs of one forward by component (the DiT's FLOP model, see ``Backbone.forward_flops``)."""
        t, h, w = self.latent_grid(latent_thw)
        d, b, n = self.hidden_size, batch_size, t * h * w
        text = self.context_dim > 0
        L = int(text_len) if text else 0
        if text and L <= 0:
            raise ValueError("this DiT is text-conditional: give text_len > 0")
        out: dict[str, int] = {}
        _add(out, "patch_embed", b * mm(n, self.in_channels * math.prod(self.patch_size), d))
        _add(out, "timestep_embed", b * (mm(1, self.frequency_dim, d) + mm(1, d, d)))
        n_attn = 1 if self.layout == "full" else 2
        if self.adaln_single:  # one linear per sample, outside the blocks
            _add(out, "t_block", b * mm(1, d, 3 * (n_attn + 1) * d))
        if text:
            _add(out, "text_proj", b * (mm(L, self.context_dim, d) + mm(L, d, d)))
        # condition tokens leading the sequence (in-context conditioning): timestep + text/label
        prefix = 1 + (L if text else 1 if self.num_classes else 0) if self.conditioning == "in_context" else 0
        for _ in range(self.depth):
            self._block(out, b, (t, h, w), L, prefix)
        if self.conditioning != "in_context" and not self.adaln_single:
            _add(out, "final_layer", b * mm(1, d, 2 * d))
        _add(out, "final_layer", b * mm(n, d, math.prod(self.patch_size) * self.out_channels))
        return out

    def _block(self, out: dict[str, int], b: int, grid: tuple[int, int, int], L: int, prefix: int) -> None:
        t, h, w = grid
        d, n = self.hidden_size, t * h * w
        n_attn = 1 if self.layout == "full" else 2
        if self.conditioning != "in_context" and not self.adaln_single:
            _add(out, "adaln", b * mm(1, d, 3 * (n_attn + 1) * d))
        if self.layout == "full":
            attention_flops(out, b, 1, prefix + n, d)
        else:  # spatial within each frame (condition tokens joined), then temporal (they skip it)
            attention_flops(out, b, t, prefix + h * w, d)
            attention_flops(out, b, h * w, t, d)
        if self.conditioning == "cross_attn":
            cross_attention_flops(out, b, n, L, d)
        # the spatial-temporal block carries the condition tokens in every frame
        mlp_flops(out, b, prefix * (1 if self.layout == "full" else t) + n, d, self.mlp_hidden)

