"""Diffusers video transformers as lvdm backbones: :class:`WanBackbone` wraps diffusers'
``WanTransformer3DModel`` (Wan 2.1 text-to-video) and :class:`LTXBackbone` its
``LTXVideoTransformer3DModel`` (LTX-Video 0.9.x) so that they meet the backbone contract
(:mod:`lvdm.models.contract`), unchanged weights and all (pure torch + diffusers).

What the Wan adapter maps, and why it gives the bare diffusers model's output (LTX-Video's: see
:class:`LTXBackbone`):

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
from inspect import signature
from typing import Optional

import torch
from diffusers import LTXVideoTransformer3DModel, WanTransformer3DModel
from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock
from diffusers.models.transformers.transformer_wan import (
    WanTransformerBlock,
    _get_qkv_projections,
)
from torch import nn

from lvdm.models.embeddings import check_latents
from lvdm.models.flops import (
    BLOCK_PARTS,
    attention_flops,
    cross_attention_flops,
    mlp_flops,
    mm,
    patch_grid,
)
from lvdm.models.layers import pad_to_patches
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.models.rope import apply_rope
from lvdm.ops.attention import attention

__all__ = ["LTXBackbone", "LTXSelfAttention", "WanBackbone", "WanSelfAttention", "build_ltx", "build_wan"]


def per_token_timesteps(timestep: torch.Tensor, b: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """``[B]`` (per sample), or ``[B, N]`` (per token, frame-major) from per-frame ``[B, T]``:
    the forms diffusers' Wan and LTX-Video transformers take."""
    timestep = torch.as_tensor(timestep)
    if timestep.ndim == 0:
        return timestep.expand(b)
    if timestep.ndim == 1 and timestep.shape[0] == b:
        return timestep
    if timestep.shape != (b, grid[0]):
        raise ValueError(f"timesteps must be [B] = [{b}] or per frame [B, T] = [{b}, {grid[0]}] (latent frames "
                         f"after patching), got {list(timestep.shape)}")
    return timestep.repeat_interleave(grid[1] * grid[2], dim=1)  # [B, N]


def _check_context(context: Optional[torch.Tensor], b: int, context_dim: int, model: str) -> None:
    """One clear line when the caption is missing or mis-shaped (neither model has a learned null caption)."""
    if context is None:
        raise ValueError(f"{model} has no learned null caption: pass context (the empty or negative prompt's tokens)")
    if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != context_dim:
        raise ValueError(f"context must be [B, L, context_dim] = [{b}, L, {context_dim}], got {list(context.shape)}")


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


class _BlockStack(nn.Module):
    """Stands in for a diffusers transformer's block list for one forward under a step cache:
    called as the transformer calls its first block, it returns ``run(hidden_states, indicator,
    blocks)`` (the backbone's ``run_blocks``), where ``blocks(tokens, start, stop)`` runs the real
    blocks ``start:stop`` with the other arguments of that call and ``indicator()`` is
    ``modulated_input(blocks[0], hidden_states, arguments)``."""

    def __init__(self, blocks: nn.ModuleList, run, modulated_input):
        super().__init__()
        self.blocks, self.run, self.modulated_input = blocks, run, modulated_input

    def forward(self, *args, **kwargs) -> torch.Tensor:
        first = self.blocks[0]
        arguments = signature(first.forward).bind(*args, **kwargs).arguments
        tokens = arguments.pop(next(iter(arguments)))  # the first parameter: the hidden states

        def blocks(x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
            for block in self.blocks[start:stop]:
                x = block(x, **arguments)
            return x

        return self.run(tokens, lambda: self.modulated_input(first, tokens, arguments), blocks)


class _DiffusersBackbone(nn.Module):
    """What the adapters share: the wrapped transformer's widths read from its config, its
    self-attention processors replaced by lvdm's (sharded attention), and the names sequence
    parallelism cuts at (``blocks``) and gathers at (``final_norm``, the transformer's
    ``norm_out``)."""

    #: the attribute of the diffusers transformer holding its blocks
    _blocks_attribute = "blocks"

    def _adopt(self, transformer: nn.Module, context_dim: int, self_attention: type) -> None:
        config = transformer.config
        self.transformer = transformer
        self.in_channels, self.out_channels = int(config.in_channels), int(config.out_channels or config.in_channels)
        self.num_heads = int(config.num_attention_heads)
        self.hidden_size = self.num_heads * int(config.attention_head_dim)
        self.context_dim = int(context_dim)
        for block in self.blocks:
            block.attn1.set_processor(self_attention())

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer's blocks (where sequence parallelism cuts)."""
        return getattr(self.transformer, self._blocks_attribute)

    @property
    def final_norm(self) -> nn.Module:
        """The transformer's final norm (whose output sequence parallelism gathers)."""
        return self.transformer.norm_out

    # ------------------------------------------------------------------------------ step caching
    def __init__(self):
        super().__init__()
        self.register_forward_pre_hook(self._substitute_blocks)
        self.register_forward_hook(self._restore_blocks, always_call=True)

    def run_blocks(self, tokens: torch.Tensor, indicator, blocks) -> torch.Tensor:
        """The block-stack hook (backbone contract): ``blocks(tokens)`` (``blocks(tokens, start, stop)``:
        blocks ``start:stop``); ``indicator()`` is the first block's normalised, modulated input
        (TeaCache's indicator, the subclass's ``_modulated_input``). Diffusers' forward loops over
        its blocks itself: while a step cache (or its calibration) replaces this method on the
        instance, each forward swaps the transformer's block list for a :class:`_BlockStack` that
        runs the blocks through it; otherwise the forward is diffusers' own, untouched."""
        return blocks(tokens)

    def _substitute_blocks(self, module: nn.Module, args) -> None:
        """Forward pre-hook: the block list becomes a :class:`_BlockStack` while ``run_blocks`` is replaced."""
        if "run_blocks" not in vars(self):
            return
        name = self._blocks_attribute
        if not callable(getattr(self, "_modulated_input", None)) or not isinstance(name, str):
            raise ValueError(f"{type(self).__name__} does not support step caching (it needs one block list and "
                             "the first block's modulated input): sample with step_cache=0")
        blocks = getattr(self.transformer, name)
        setattr(self.transformer, name, nn.ModuleList([_BlockStack(blocks, self.run_blocks, self._modulated_input)]))

    def _restore_blocks(self, module: nn.Module, args, output) -> None:
        """Forward hook (always called, errors included): the real block list is back."""
        name = self._blocks_attribute
        current = getattr(self.transformer, name) if isinstance(name, str) else None
        if current is not None and isinstance(current[0], _BlockStack):
            setattr(self.transformer, name, current[0].blocks)


class WanBackbone(_DiffusersBackbone):
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
        self._adopt(transformer, config.text_dim, WanSelfAttention)
        self.text_length = None if text_length is None else int(text_length)
        self.patch_size = tuple(int(p) for p in config.patch_size)

    # ------------------------------------------------------------------------------ inputs
    def _text(self, context: Optional[torch.Tensor], context_mask: Optional[torch.Tensor], b: int) -> torch.Tensor:
        """The caption as Wan's pipeline gives it: padding tokens zero, zero-padded to ``text_length``."""
        _check_context(context, b, self.context_dim, "Wan")
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
        timestep = per_token_timesteps(timestep, b, grid)
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
        return cross_attention_dit_flops(self, latent_thw, length, batch_size, int(config.freq_dim), int(config.ffn_dim))

    @staticmethod
    def _modulated_input(block: WanTransformerBlock, tokens: torch.Tensor, arguments: dict) -> torch.Tensor:
        """Step caching's indicator: ``block``'s self-attention input ``norm1(x)·(1 + scale) + shift``,
        as the block computes it from its ``scale_shift_table`` and ``temb`` (per sample
        ``[B, 6, D]`` or per token ``[B, N, 6, D]``)."""
        mods = block.scale_shift_table + arguments["temb"].float()
        mods = mods[:, None] if mods.ndim == 3 else mods  # [B, 1 or N, 6, D]
        return (block.norm1(tokens.float()) * (1 + mods[:, :, 1]) + mods[:, :, 0]).type_as(tokens)


def cross_attention_dit_flops(backbone: nn.Module, latent_thw: Sequence[int], length: int, batch_size: int,
                              freq_dim: int, ffn_dim: int) -> dict[str, int]:
    """FLOPs of a text-to-video transformer of Wan's and LTX-Video's shape at a per-sample
    timestep: patch embedding, timestep MLP ``freq_dim → D → D → 6D``, two-layer caption
    projection of ``length`` tokens, per block self-attention, cross-attention to the caption and
    a feed-forward of ``ffn_dim``, and the final projection (modulations are elementwise)."""
    t, h, w = patch_grid(backbone.patch_size, latent_thw)
    d, b, n, patch = backbone.hidden_size, batch_size, t * h * w, math.prod(backbone.patch_size)
    out: dict[str, int] = {name: 0 for name in BLOCK_PARTS}
    out["patch_embed"] = b * mm(n, backbone.in_channels * patch, d)
    out["timestep_embed"] = b * (mm(1, freq_dim, d) + mm(1, d, d) + mm(1, d, 6 * d))
    out["text_proj"] = b * (mm(length, backbone.context_dim, d) + mm(length, d, d))
    for _ in backbone.blocks:
        attention_flops(out, b, 1, n, d)
        cross_attention_flops(out, b, n, length, d)
        mlp_flops(out, b, n, d, ffn_dim)
    out["final_layer"] = b * mm(n, d, backbone.out_channels * patch)
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


# ---------------------------------------------------------------------------------- LTX-Video
class LTXSelfAttention:
    """Attention processor of the LTX-Video blocks' self-attention (``attn1``): diffusers'
    ``LTXVideoAttnProcessor`` computation (QK-RMSNorm across heads, RoPE over the whole width
    before the head split, pairs interleaved) with the attention itself through
    :func:`lvdm.ops.attention.attention` (``sharded=True``)."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, image_rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("LTXSelfAttention serves self-attention only (no encoder states, no mask)")
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        if image_rotary_emb is not None:  # diffusers' tables: [B, N, D], pairs interleaved
            cos, sin = image_rotary_emb
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B, H, N, hd]
        out = attention(q, k, v, sharded=True).transpose(1, 2).flatten(2).type_as(q)  # [B, N, D]
        return attn.to_out[1](attn.to_out[0](out))


class LTXBackbone(_DiffusersBackbone):
    """Diffusers' ``LTXVideoTransformer3DModel`` (LTX-Video 0.9.x) meeting lvdm's backbone
    contract. Wraps ``transformer`` as is (its self-attention processors replaced by
    :class:`LTXSelfAttention`); :func:`build_ltx` builds one with lvdm's initialisation.

    What the adapter maps, as diffusers' ``LTXPipeline`` feeds the model:

    * **latents** ``[B, C, T, H, W]`` become ``T·H·W`` tokens of ``C`` frame-major (the pipeline's
      ``_pack_latents`` at LTX's patch 1: every latent size is whole patches) and back.
    * **timesteps**: ``t · 1000`` (the pipeline passes the scheduler's ``σ · 1000``): lvdm's
      ``RectifiedFlow(time_scale=1000)``; per-frame ``[B, T]`` become per-token ``[B, N]``
      (the model takes them so: a modulation per token).
    * **text**: T5 tokens ``[B, L, context_dim]`` with their mask (the pipeline pads to 128 and
      passes the tokenizer's mask, which the model turns into a -10000 bias), so the padding length
      does not matter; no learned null caption (the negative prompt's tokens).
    * **positions**: the pipeline's RoPE scale ``(compression_t / frame_rate, compression_h,
      compression_w)`` from the VAE's compression ``(8, 32, 32)`` and the frame rate (25):
      adapter settings, fixed for a set of weights.

    Args:
        transformer: a diffusers ``LTXVideoTransformer3DModel`` with ``patch_size`` 1.
        frame_rate: the frame rate the RoPE's temporal scale reads (the pipeline's ``frame_rate``).
        compression: the VAE's ``(temporal, spatial, spatial)`` compression the RoPE scale reads.
    """

    #: Sequence parallelism cuts the tokens entering ``transformer_blocks[0]`` with the RoPE
    #: tables and per-token modulations (a per-sample ``temb`` ``[B, 1, 6D]`` stays whole) and
    #: gathers the final norm's output (the final modulation and projection see every token).
    #: Diffusers' own ``_cp_plan`` needs a ``DeviceMesh`` and its attention backends.
    sequence_parallel_plan = SequenceSplit(
        blocks="blocks", tokens="hidden_states", grid=None, gather="final_norm",
        follow_split=("image_rotary_emb", "temb"), unit="video token",
    )

    #: diffusers' block: the checkpoint and compile unit.
    block_class = LTXVideoTransformerBlock
    _blocks_attribute = "transformer_blocks"

    #: The frame rate is an adapter setting (the RoPE scale), not a per-sample condition.
    micro_conditions: tuple[str, ...] = ()

    #: The RoPE's scale: other values give other outputs from the same weights.
    fixed_position_settings = ("frame_rate", "compression")

    #: The attention projections (self and cross) and the feed-forward linears of the blocks.
    lora_targets = (r"transformer\.transformer_blocks\.\d+\.((attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
                    r"|ff\.net\.(0\.proj|2))")

    def __init__(self, transformer: LTXVideoTransformer3DModel, frame_rate: float = 25.0,
                 compression: Sequence[int] = (8, 32, 32)):
        super().__init__()
        config = transformer.config
        if (config.patch_size, config.patch_size_t) != (1, 1):
            raise ValueError("LTXBackbone adapts LTX-Video's patch 1 (its pipeline packs latents unpatched), got "
                             f"patch_size={config.patch_size}, patch_size_t={config.patch_size_t}")
        self._adopt(transformer, config.caption_channels, LTXSelfAttention)
        self.frame_rate, self.compression = float(frame_rate), tuple(int(c) for c in compression)
        self.patch_size = (1, 1, 1)

    @property
    def rope_interpolation_scale(self) -> tuple[float, int, int]:
        """What the pipeline passes: ``(compression_t / frame_rate, compression_h, compression_w)``."""
        return (self.compression[0] / self.frame_rate, *self.compression[1:])

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict LTX-Video's target (the velocity ``ε - x0``) for latents ``x`` ``[B, C, T, H, W]``
        at ``timestep`` ``[B]`` or ``[B, T]`` (``t · 1000``) from T5 tokens ``context``
        ``[B, L, context_dim]`` (boolean ``context_mask`` ``[B, L]``, True = real)."""
        check_latents(x, self.in_channels)
        b, _, t, h, w = x.shape
        timestep = per_token_timesteps(timestep, b, (t, h, w))
        _check_context(context, b, self.context_dim, "LTX-Video")
        tokens = x.flatten(2).transpose(1, 2)  # [B, T·H·W, C]
        out = self.transformer(tokens, context, timestep, context_mask, num_frames=t, height=h, width=w,
                               rope_interpolation_scale=self.rope_interpolation_scale, return_dict=False)[0]
        return out.transpose(1, 2).unflatten(2, (t, h, w))

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract) at a per-sample timestep over ``text_len`` caption
        tokens (the masked padding the pipeline adds is attended to as well: count its length)."""
        if text_len <= 0:
            raise ValueError("LTX-Video is text-conditional: give text_len > 0")
        freq_dim = self.transformer.time_embed.emb.time_proj.num_channels
        return cross_attention_dit_flops(self, latent_thw, int(text_len), batch_size, freq_dim, 4 * self.hidden_size)

    @staticmethod
    def _modulated_input(block: LTXVideoTransformerBlock, tokens: torch.Tensor, arguments: dict) -> torch.Tensor:
        """Step caching's indicator: ``block``'s self-attention input ``norm1(x)·(1 + scale) + shift``,
        as the block computes it from its ``scale_shift_table`` and ``temb`` ``[B, 1 or N, 6D]``."""
        temb, table = arguments["temb"], block.scale_shift_table
        mods = table[None, None] + temb.reshape(len(tokens), temb.size(1), table.shape[0], -1)
        return block.norm1(tokens) * (1 + mods[:, :, 1]) + mods[:, :, 0]


def build_ltx(
    in_channels: int = 128,
    out_channels: int = 128,
    num_attention_heads: int = 32,
    attention_head_dim: int = 64,
    num_layers: int = 28,
    caption_channels: int = 4096,
    norm_eps: float = 1e-6,
    frame_rate: float = 25.0,
    compression: Sequence[int] = (8, 32, 32),
) -> LTXBackbone:
    """An :class:`LTXBackbone` around a new diffusers ``LTXVideoTransformer3DModel`` (defaults:
    LTX-Video 0.9.x 2B's config; the cross-attention width is the model's, 2048) with lvdm's from-scratch initialisation on top of diffusers':
    the output projections of every residual branch and the final projection are zero, so every
    block starts as the identity and the model predicts 0 (load published weights with
    :func:`lvdm.models.presets.from_diffusers_ltx` instead)."""
    transformer = LTXVideoTransformer3DModel(
        in_channels=in_channels, out_channels=out_channels, num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim, cross_attention_dim=num_attention_heads * attention_head_dim,
        num_layers=num_layers,
        caption_channels=caption_channels, norm_eps=norm_eps,
    )
    for block in transformer.transformer_blocks:
        for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
            _zero(linear)
    _zero(transformer.proj_out)
    return LTXBackbone(transformer, frame_rate, compression)
