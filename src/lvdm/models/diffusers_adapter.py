"""Diffusers video transformers as lvdm backbones: :class:`WanBackbone` wraps diffusers'
``WanTransformer3DModel`` (Wan 2.1 text-to-video) so that it meets the backbone contract
(:mod:`lvdm.models.contract`), unchanged weights and all (pure torch + diffusers).

What the adapter maps, and why it gives the bare diffusers model's output:

* **latents** ``[B, C, T, H, W]`` are zero-padded to whole ``(pt, ph, pw)`` patches and the
  prediction cropped back (diffusers' Wan drops a partial patch).
* **timesteps**: the network takes ``t · 1000`` (``FlowMatchEulerDiscreteScheduler``'s
  ``num_train_timesteps``; Wan's ``num_train_timesteps = 1000``), which is what lvdm's
  :class:`~lvdm.diffusion.objectives.RectifiedFlow` passes with its default ``time_scale=1000``:
  no mapping inside the adapter. Per-frame timesteps ``[B, T]`` become per-token ones
  ``[B, T·h·w]`` (Wan 2.2 TI2V's form, which diffusers' model takes; it then holds a
  ``[B, N, 6, D]`` modulation per block, so per-sample times are the cheap form).
* **text**: Wan has no attention mask over the caption. Its pipeline cuts the umT5 tokens at
  the caption's length and zero-pads them to ``max_sequence_length`` (512, Wan's ``text_len``);
  the zeros pass the text projection and are attended to. The adapter does the same with
  ``context`` and ``context_mask``: tokens where the mask is False are zeroed and the caption
  is zero-padded to ``text_length`` (None: left at its length). Wan has no learned null
  caption: the unconditional half is the (negative) prompt's umT5 tokens.
* **micro-conditions**: none (text-to-video).

Sequence parallelism uses lvdm's hooks (:mod:`lvdm.distributed.plan`), not diffusers'
``_cp_plan`` (that needs a ``DeviceMesh`` and diffusers' own attention backends): the video
tokens entering ``blocks[0]`` are cut (with the RoPE tables and per-token modulations), the
self-attention runs through :func:`lvdm.ops.attention.attention` (``sharded=True``: Ulysses or
ring), the cross-attention sees the whole caption on every rank, and the output of the final
norm is gathered before the final modulation and projection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock, _get_qkv_projections
from torch import nn

from lvdm.models.embeddings import check_latents
from lvdm.models.flops import BLOCK_PARTS, attention_flops, cross_attention_flops, mlp_flops, mm, patch_grid
from lvdm.models.layers import pad_to_patches
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.models.rope import apply_rope
from lvdm.ops.attention import attention

__all__ = ["WanBackbone", "WanSelfAttention", "build_wan"]


class WanSelfAttention:
    """Attention processor of the Wan blocks' self-attention (``attn1``): diffusers'
    ``WanAttnProcessor`` computation (QK-RMSNorm across heads, interleaved RoPE) with the
    attention itself through :func:`lvdm.ops.attention.attention` (``sharded=True``), so that
    under sequence parallelism each rank's queries see every rank's keys."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("WanSelfAttention serves self-attention only (no encoder states, no mask)")
        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B, H, N, hd]
        if rotary_emb is not None:  # diffusers' tables: [1, N, 1, hd], pairs interleaved
            cos, sin = (table.transpose(1, 2) for table in rotary_emb)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attention(q, k, v, sharded=True).transpose(1, 2).flatten(2).type_as(q)  # [B, N, D]
        return attn.to_out[1](attn.to_out[0](out))


class WanBackbone(nn.Module):
    """Diffusers' ``WanTransformer3DModel`` meeting lvdm's backbone contract (see the module
    docstring). Wraps ``transformer`` as is (weights untouched; its blocks' self-attention
    processors are replaced by :class:`WanSelfAttention`); :func:`build_wan` builds one from a
    config with lvdm's initialisation.

    Args:
        transformer: a diffusers ``WanTransformer3DModel`` (text-to-video: no image tokens).
        text_length: the length the caption is zero-padded to (Wan: 512); None: no padding.
    """

    #: Sequence parallelism cuts the video tokens entering ``blocks[0]`` (token by token: the
    #: per-token modulations ``temb`` ``[B, N, 6, D]`` of per-frame timesteps and the RoPE
    #: tables are cut alike; a per-sample ``temb`` ``[B, 6, D]`` stays whole) and gathers the
    #: final norm's output (the final modulation and projection then run on every token).
    sequence_parallel_plan = SequenceSplit(
        blocks="blocks", tokens="hidden_states", grid=None, gather="final_norm",
        follow_split=("rotary_emb", ("temb", 4)), unit="video token",
    )

    #: diffusers' block: the checkpoint and compile unit.
    block_class = WanTransformerBlock

    #: Text-to-video Wan takes no micro-condition.
    micro_conditions: tuple[str, ...] = ()

    #: The caption's zero-padded length changes the cross-attention (the padding tokens are
    #: keys): ``init_from`` refuses weights trained with another.
    fixed_position_settings = ("text_length",)

    #: The attention projections (self and cross) and the feed-forward linears of the blocks.
    lora_targets = r"transformer\.blocks\.\d+\.((attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.(0\.proj|2))"

    def __init__(self, transformer: WanTransformer3DModel, text_length: Optional[int] = 512):
        super().__init__()
        config = transformer.config
        if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
            raise ValueError("WanBackbone adapts text-to-video Wan; this transformer takes image tokens "
                             f"(image_dim={config.get('image_dim')}, added_kv_proj_dim={config.get('added_kv_proj_dim')})")
        self.transformer = transformer
        self.text_length = None if text_length is None else int(text_length)
        self.in_channels, self.out_channels = int(config.in_channels), int(config.out_channels or config.in_channels)
        self.patch_size = tuple(int(p) for p in config.patch_size)
        self.num_heads = int(config.num_attention_heads)
        self.hidden_size = self.num_heads * int(config.attention_head_dim)
        self.context_dim = int(config.text_dim)
        for block in transformer.blocks:
            block.attn1.set_processor(WanSelfAttention())

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer's blocks (where sequence parallelism cuts)."""
        return self.transformer.blocks

    @property
    def final_norm(self) -> nn.Module:
        """The transformer's final norm (whose output sequence parallelism gathers)."""
        return self.transformer.norm_out

    # ------------------------------------------------------------------------------ inputs
    def _timesteps(self, timestep: torch.Tensor, b: int, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B]`` (per sample), or ``[B, N]`` (per token) from per-frame ``[B, T]``."""
        timestep = torch.as_tensor(timestep)
        if timestep.ndim == 0:
            return timestep.expand(b)
        if timestep.ndim == 1 and timestep.shape[0] == b:
            return timestep
        if timestep.shape != (b, grid[0]):
            raise ValueError(f"timesteps must be [B] = [{b}] or per frame [B, T] = [{b}, {grid[0]}] (latent frames "
                             f"after patching), got {list(timestep.shape)}")
        return timestep.repeat_interleave(grid[1] * grid[2], dim=1)  # [B, N]

    def _text(self, context: Optional[torch.Tensor], context_mask: Optional[torch.Tensor], b: int) -> torch.Tensor:
        """The caption as Wan's pipeline gives it: padding tokens zero, zero-padded to ``text_length``."""
        if context is None:
            raise ValueError("Wan has no learned null caption: pass context (the empty or negative prompt's tokens)")
        if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be [B, L, context_dim] = [{b}, L, {self.context_dim}], "
                             f"got {list(context.shape)}")
        length = context.shape[1]
        if self.text_length is not None and length > self.text_length:
            raise ValueError(f"context has {length} tokens, more than Wan's text_length {self.text_length}")
        if context_mask is not None:
            context = context * context_mask.to(context.dtype)[..., None]
        if self.text_length is not None and length < self.text_length:
            context = torch.cat([context, context.new_zeros(b, self.text_length - length, context.shape[-1])], 1)
        return context

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict Wan's target (the velocity ``ε - x0``) for latents ``x`` ``[B, C, T, H, W]`` at
        ``timestep`` ``[B]`` or ``[B, T]`` (``t · 1000``) from umT5 tokens ``context``
        ``[B, L, context_dim]`` (boolean ``context_mask`` ``[B, L]``, True = real)."""
        check_latents(x, self.in_channels)
        b, _, *size = x.shape
        grid = patch_grid(self.patch_size, size)
        timestep = self._timesteps(timestep, b, grid)
        text = self._text(context, context_mask, b)
        out = self.transformer(pad_to_patches(x, self.patch_size), timestep, text, return_dict=False)[0]
        return out[:, :, : size[0], : size[1], : size[2]]

    # ------------------------------------------------------------------------------ FLOPs
    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract) at a per-sample timestep; the caption counts
        ``max(text_len, text_length)`` tokens (its zero padding is attended to)."""
        if text_len <= 0:
            raise ValueError("Wan is text-conditional: give text_len > 0")
        config = self.transformer.config
        length = max(int(text_len), self.text_length or 0)
        t, h, w = patch_grid(self.patch_size, latent_thw)
        d, b, n, patch = self.hidden_size, batch_size, t * h * w, math.prod(self.patch_size)
        out: dict[str, int] = {name: 0 for name in BLOCK_PARTS}
        out["patch_embed"] = b * mm(n, self.in_channels * patch, d)
        out["timestep_embed"] = b * (mm(1, config.freq_dim, d) + mm(1, d, d) + mm(1, d, 6 * d))
        out["text_proj"] = b * (mm(length, self.context_dim, d) + mm(length, d, d))
        for _ in self.blocks:  # modulation: the table plus the timestep projection, elementwise
            attention_flops(out, b, 1, n, d)
            cross_attention_flops(out, b, n, length, d)
            mlp_flops(out, b, n, d, int(config.ffn_dim))
        out["final_layer"] = b * mm(n, d, self.out_channels * patch)
        return out


def _zero(linear: nn.Linear) -> None:
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)


def build_wan(
    patch_size: Sequence[int] = (1, 2, 2),
    num_attention_heads: int = 12,
    attention_head_dim: int = 128,
    in_channels: int = 16,
    out_channels: int = 16,
    text_dim: int = 4096,
    freq_dim: int = 256,
    ffn_dim: int = 8960,
    num_layers: int = 30,
    cross_attn_norm: bool = True,
    eps: float = 1e-6,
    rope_max_seq_len: int = 1024,
    text_length: Optional[int] = 512,
) -> WanBackbone:
    """A :class:`WanBackbone` around a new diffusers ``WanTransformer3DModel`` (defaults: Wan 2.1
    T2V 1.3B's config) with lvdm's from-scratch initialisation on top of diffusers': the output
    projections of every residual branch (self- and cross-attention, feed-forward) and the final
    projection are zero, so every block starts as the identity and the model predicts 0 (load
    published weights with :func:`lvdm.models.presets.from_diffusers_wan` instead)."""
    transformer = WanTransformer3DModel(
        patch_size=tuple(patch_size), num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
        in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
        num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm="rms_norm_across_heads", eps=eps,
        rope_max_seq_len=rope_max_seq_len,
    )
    for block in transformer.blocks:
        for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
            _zero(linear)
    _zero(transformer.proj_out)
    return WanBackbone(transformer, text_length)
