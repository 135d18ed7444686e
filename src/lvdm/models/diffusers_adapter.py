"""Diffusers video transformers as lvdm backbones: :class:`WanBackbone` wraps diffusers'
``WanTransformer3DModel`` (Wan 2.1 text- and image-to-video; :class:`WanExperts` Wan 2.2's two),
:class:`LTXBackbone` its ``LTXVideoTransformer3DModel`` (LTX-Video 0.9.x),
:class:`CogVideoXBackbone` its ``CogVideoXTransformer3DModel``, :class:`HunyuanVideoBackbone` its
``HunyuanVideoTransformer3DModel`` and :class:`MochiBackbone` its ``MochiTransformer3DModel``, so
that they meet the backbone contract (:mod:`lvdm.models.contract`), unchanged weights and all (pure
torch + diffusers). Each is fed as its diffusers pipeline feeds the bare model (see each class).

What the Wan adapter maps, and why it gives the bare diffusers model's output:

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
* **image-to-video** (Wan 2.1 I2V; Wan 2.2 I2V has the channels but no image tokens): the
  transformer's extra input channels (``in_channels − out_channels``: 4 of the mask over the
  4× temporally compressed frames, then 16 of the given frames' VAE latents, zeros elsewhere)
  are the micro-condition ``image_condition``, concatenated after the noisy latents as
  ``WanImageToVideoPipeline`` does; CLIP's penultimate hidden states are ``image_embeds``
  (``encoder_hidden_states_image``: embedded, and attended to by the image key/value projections
  of every cross-attention). Text-to-video Wan takes no micro-condition. Wan 2.2 TI2V's
  first-frame conditioning (``expand_timesteps``) is the latent frame itself at a per-frame
  timestep of 0: lvdm's masked-frame conditioning.

Wan 2.2's two noise-level experts are :class:`WanExperts`.

Sequence parallelism uses lvdm's hooks (:mod:`lvdm.distributed.plan`), not diffusers'
``_cp_plan`` (that needs a ``DeviceMesh`` and diffusers' own attention backends): the video
tokens entering ``blocks[0]`` are cut (with the RoPE tables and per-token modulations), the
self-attention runs through :func:`lvdm.ops.attention.attention` (``sharded=True``: Ulysses or
ring), the cross-attention sees the whole caption on every rank, and the output of the final
norm is gathered before the final modulation and projection.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from inspect import signature
from typing import Optional

import torch
from diffusers import (
    CogVideoXTransformer3DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    MochiTransformer3DModel,
    WanTransformer3DModel,
)
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoSingleTransformerBlock,
    HunyuanVideoTransformerBlock,
)
from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock
from diffusers.models.transformers.transformer_mochi import MochiTransformerBlock
from diffusers.models.transformers.transformer_wan import (
    WanTransformerBlock,
    _get_qkv_projections,
)
from torch import nn

from lvdm.models.contract import given_frames_condition
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

#: Wan I2V's mask channels: one per pixel frame of a latent frame (the Wan-VAE's 4× time compression).
WAN_MASK_CHANNELS = 4

__all__ = ["CogVideoXBackbone", "CogVideoXJointAttention", "HunyuanVideoBackbone", "HunyuanVideoJointAttention",
           "MochiBackbone", "MochiJointAttention", "LTXBackbone", "LTXSelfAttention", "WanBackbone", "WanExperts", "WanSelfAttention", "build_ltx", "build_wan",
           "build_wan_experts", "build_cogvideox", "build_hunyuanvideo", "build_mochi"]


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

    #: the attribute of the diffusers transformer holding its blocks (a tuple: several lists, in order)
    _blocks_attribute: str | tuple[str, ...] = "blocks"
    #: the attribute of a block holding the attention whose processor lvdm replaces
    _attention_attribute = "attn1"

    def _adopt(self, transformer: nn.Module, context_dim: int, self_attention: type) -> None:
        config = transformer.config
        self.transformer = transformer
        self.in_channels, self.out_channels = int(config.in_channels), int(config.out_channels or config.in_channels)
        self.num_heads = int(config.num_attention_heads)
        self.hidden_size = self.num_heads * int(config.attention_head_dim)
        self.context_dim = int(context_dim)
        for block in self.blocks:
            attention = getattr(block, self._attention_attribute)
            if hasattr(attention, "set_processor"):
                attention.set_processor(self_attention())
            else:  # diffusers' MochiAttention keeps a plain processor attribute
                attention.processor = self_attention()

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer's blocks in order (where sequence parallelism cuts)."""
        names = (self._blocks_attribute,) if isinstance(self._blocks_attribute, str) else self._blocks_attribute
        return nn.ModuleList([block for name in names for block in getattr(self.transformer, name)])

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
        transformer: a diffusers ``WanTransformer3DModel`` (text- or image-to-video).
        text_length: the length the caption is zero-padded to (Wan: 512; with image tokens it
            must be 512, where diffusers' attention cuts the image tokens off); None: no padding.
        image_length: the image tokens a missing ``image_embeds`` has (CLIP ViT-H/14: 257).
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

    #: Text-to-video Wan takes no micro-condition; image-to-video ``image_condition`` and (with
    #: image tokens) ``image_embeds`` (set per instance).
    micro_conditions: tuple[str, ...] = ()

    #: The caption's zero-padded length changes the cross-attention (the padding tokens are
    #: keys): ``init_from`` refuses weights trained with another.
    fixed_position_settings = ("text_length",)

    #: The attention projections (self and cross) and the feed-forward linears of the blocks.
    lora_targets = r"transformer\.blocks\.\d+\.((attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.(0\.proj|2))"

    def __init__(self, transformer: WanTransformer3DModel, text_length: Optional[int] = 512, image_length: int = 257):
        super().__init__()
        config = transformer.config
        self._adopt(transformer, config.text_dim, WanSelfAttention)
        self.text_length = None if text_length is None else int(text_length)
        self.patch_size = tuple(int(p) for p in config.patch_size)
        self.image_condition_channels = self.in_channels - self.out_channels
        self._check_image_to_video(config)
        self.image_dim, self.image_length = config.get("image_dim"), int(image_length)
        self.in_channels = self.out_channels  # the noisy latents; the condition channels come as image_condition
        self.micro_conditions = tuple(name for name, used in (("image_condition", self.image_condition_channels),
                                                              ("image_embeds", self.image_dim)) if used)

    def _check_image_to_video(self, config) -> None:
        """Refuse the image-to-video settings the adapter cannot serve, in one line each."""
        if self.image_condition_channels < 0:
            raise ValueError(f"Wan in_channels={self.in_channels} < out_channels={self.out_channels}")
        if config.get("pos_embed_seq_len") is not None:
            raise ValueError("Wan first-last-frame models (pos_embed_seq_len="
                             f"{config.pos_embed_seq_len}) are not adapted; Wan 2.1 I2V (one image) is")
        if (config.get("image_dim") is None) != (config.get("added_kv_proj_dim") is None):
            raise ValueError(f"Wan image tokens need both image_dim and added_kv_proj_dim, got "
                             f"image_dim={config.get('image_dim')}, added_kv_proj_dim={config.get('added_kv_proj_dim')}")
        if config.get("image_dim") is not None and self.text_length != 512:
            raise ValueError(f"Wan with image tokens needs text_length=512, got {self.text_length}: diffusers' "
                             "WanAttnProcessor takes all but the last 512 context tokens as the image's")

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

    def pack_image_condition(self, latents: torch.Tensor, given_mask: torch.Tensor) -> torch.Tensor:
        """Wan I2V's condition for latents ``[B, C, T, H, W]`` with given frames ``given_mask``
        ``[B, T]`` (True: given): 4 mask channels (``WanImageToVideoPipeline.prepare_latents``'s
        pixel-frame mask folded by the VAE's 4× time compression: all four 1 on a given latent
        frame), then the latents at the given frames and zeros elsewhere. diffusers encodes the
        image followed by grey frames, so its frames after the first carry the VAE's latents of
        grey, not zeros: lvdm's condition differs there (cached latents have no pixels to encode)."""
        return given_frames_condition(latents, given_mask, WAN_MASK_CHANNELS, self.image_condition_channels)

    def _image_inputs(self, x: torch.Tensor, image_condition: Optional[torch.Tensor],
                      image_embeds: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The transformer's input (the latents, then ``image_condition``'s channels, as
        ``WanImageToVideoPipeline`` concatenates them) and its image tokens; a missing condition
        is zeros (no frame given, a zero image embedding of ``image_length`` tokens)."""
        b, _, *size = x.shape
        for name, value in (("image_condition", image_condition), ("image_embeds", image_embeds)):
            if value is not None and name not in self.micro_conditions:
                raise ValueError(f"this Wan takes no {name} (its micro-conditions: {self.micro_conditions})")
        if self.image_condition_channels:
            shape = (b, self.image_condition_channels, *size)
            image_condition = x.new_zeros(shape) if image_condition is None else image_condition
            if tuple(image_condition.shape) != shape:
                raise ValueError(f"image_condition must be [B, C, T, H, W] = {list(shape)}, "
                                 f"got {list(image_condition.shape)}")
            x = torch.cat([x, image_condition.to(x.dtype)], 1)
        if self.image_dim is not None:
            image_embeds = x.new_zeros(b, self.image_length, self.image_dim) if image_embeds is None else image_embeds
            if image_embeds.ndim != 3 or image_embeds.shape[0] != b or image_embeds.shape[-1] != self.image_dim:
                raise ValueError(f"image_embeds must be [B, L, image_dim] = [{b}, L, {self.image_dim}], "
                                 f"got {list(image_embeds.shape)}")
        return x, image_embeds

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None, image_condition: Optional[torch.Tensor] = None,
                image_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict Wan's target (the velocity ``ε - x0``) for latents ``x`` ``[B, C, T, H, W]`` at
        ``timestep`` ``[B]`` or ``[B, T]`` (``t · 1000``) from umT5 tokens ``context``
        ``[B, L, context_dim]`` (boolean ``context_mask`` ``[B, L]``, True = real); image-to-video
        models also take ``image_condition`` ``[B, in − out channels, T, H, W]`` (the mask's
        channels, then the given frames' latents) and CLIP's ``image_embeds`` ``[B, L, image_dim]``."""
        check_latents(x, self.in_channels)
        b, _, *size = x.shape
        grid = patch_grid(self.patch_size, size)
        timestep = per_token_timesteps(timestep, b, grid)
        text = self._text(context, context_mask, b)
        hidden, image = self._image_inputs(x, image_condition, image_embeds)
        out = self.transformer(pad_to_patches(hidden, self.patch_size), timestep, text, image, return_dict=False)[0]
        return out[:, :, : size[0], : size[1], : size[2]]

    # ------------------------------------------------------------------------------ FLOPs
    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract) at a per-sample timestep; the caption counts
        ``max(text_len, text_length)`` tokens (its zero padding is attended to), the image
        ``image_length`` tokens (embedder, per block their key/value projections and attention)."""
        if text_len <= 0:
            raise ValueError("Wan is text-conditional: give text_len > 0")
        config = self.transformer.config
        length = max(int(text_len), self.text_length or 0)
        out = cross_attention_dit_flops(self, latent_thw, length, batch_size, int(config.freq_dim), int(config.ffn_dim))
        if self.image_dim is not None:
            b, n, d, li = batch_size, math.prod(patch_grid(self.patch_size, latent_thw)), self.hidden_size, self.image_length
            out["image_embed"] = b * (mm(li, self.image_dim, self.image_dim) + mm(li, self.image_dim, d))
            out["cross_proj"] += len(self.blocks) * b * mm(li, d, 2 * d)
            out["cross_attention"] += len(self.blocks) * b * 4 * n * li * d
        return out

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
    out["patch_embed"] = b * mm(n, int(backbone.transformer.config.in_channels) * patch, d)
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
    image_dim: Optional[int] = None,
    added_kv_proj_dim: Optional[int] = None,
    image_length: int = 257,
) -> WanBackbone:
    """A :class:`WanBackbone` around a new diffusers ``WanTransformer3DModel`` (defaults: Wan 2.1
    T2V 1.3B's config; ``in_channels`` above ``out_channels`` and ``image_dim`` with
    ``added_kv_proj_dim``: Wan 2.1 I2V) with lvdm's from-scratch initialisation on top of diffusers': the output
    projections of every residual branch (self- and cross-attention, feed-forward) and the final
    projection are zero, so every block starts as the identity and the model predicts 0 (load
    published weights with :func:`lvdm.models.presets.from_diffusers_wan` instead)."""
    transformer = WanTransformer3DModel(
        patch_size=tuple(patch_size), num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
        in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
        num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm="rms_norm_across_heads", eps=eps,
        rope_max_seq_len=rope_max_seq_len, image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim,
    )
    for block in transformer.blocks:
        for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
            _zero(linear)
    _zero(transformer.proj_out)
    return WanBackbone(transformer, text_length, image_length)


class WanExperts(nn.Module):
    """Wan 2.2 A14B's two noise-level experts as one backbone: ``high`` (the pipeline's
    ``transformer``) denoises the timesteps ``t ≥ boundary_ratio · 1000``, ``low``
    (``transformer_2``) the others, the rule of diffusers' ``WanPipeline`` (``boundary_timestep =
    boundary_ratio · num_train_timesteps``, compared with the scheduler's ``σ · 1000``, which is
    the ``t · 1000`` lvdm passes). Each sample of a batch goes to its own expert; per-frame times
    go by the sample's largest (its noisiest frame). Both are :class:`WanBackbone` of one config.

    Training both in one module: a step whose samples all fall on one side leaves the other
    expert without gradients (DDP then needs ``find_unused_parameters``); Wan trains each expert
    alone, on its side of the boundary, which is one :class:`WanBackbone`.

    Args:
        high: the high-noise expert (``transformer``).
        low: the low-noise expert (``transformer_2``).
        boundary_ratio: the pipeline's ``boundary_ratio`` (Wan 2.2 T2V: 0.875, I2V: 0.9).
        num_train_timesteps: the scheduler's (1000).
    """

    #: No blocks of its own: each expert's plan (:attr:`WanBackbone.sequence_parallel_plan`) cuts
    #: and gathers inside it.
    sequence_parallel_plan = SequenceSplit(blocks=(), tokens="hidden_states", grid=None, gather="",
                                           unit="video token")
    block_class = WanTransformerBlock
    #: A different boundary routes the same times to the other expert.
    fixed_position_settings = ("high.text_length", "boundary")
    lora_targets = r"(high|low)\." + WanBackbone.lora_targets

    def __init__(self, high: WanBackbone, low: WanBackbone, boundary_ratio: float, num_train_timesteps: int = 1000):
        super().__init__()
        if dict(high.transformer.config) != dict(low.transformer.config) or high.text_length != low.text_length:
            raise ValueError("WanExperts needs two experts of one config and text_length")
        if not 0.0 < boundary_ratio < 1.0:
            raise ValueError(f"boundary_ratio must be in (0, 1), got {boundary_ratio}")
        self.high, self.low = high, low
        self.boundary = float(boundary_ratio) * num_train_timesteps
        for name in ("in_channels", "patch_size", "hidden_size", "num_heads", "context_dim", "micro_conditions",
                     "image_condition_channels"):
            setattr(self, name, getattr(high, name))

    def pack_image_condition(self, latents: torch.Tensor, given_mask: torch.Tensor) -> torch.Tensor:
        """The experts' image condition (:meth:`WanBackbone.pack_image_condition`; one config)."""
        return self.high.pack_image_condition(latents, given_mask)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None, image_condition: Optional[torch.Tensor] = None,
                image_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`WanBackbone.forward` of each sample's expert."""
        check_latents(x, self.in_channels)
        b = x.shape[0]
        timestep = torch.as_tensor(timestep, device=x.device)
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep
        times = per_token_timesteps(timestep, b, patch_grid(self.patch_size, x.shape[2:]))
        high = (times if times.ndim == 1 else times.amax(1)) >= self.boundary
        inputs = dict(timestep=timestep, context=context, context_mask=context_mask,
                      image_condition=image_condition, image_embeds=image_embeds)
        if x.is_meta:  # no values to route by (FLOP counting, shapes): the experts share one config
            return self.high(x, **inputs)
        if high.all() or not high.any():
            return (self.high if high.all() else self.low)(x, **inputs)
        out = x.new_empty(x.shape)
        for expert, rows in ((self.high, high), (self.low, ~high)):
            out[rows] = expert(x[rows], **{k: None if v is None else v[rows] for k, v in inputs.items()})
        return out

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """One expert's (each sample runs one)."""
        return self.high.forward_flops(latent_thw, text_len, batch_size)


def build_wan_experts(boundary_ratio: float = 0.875, **wan: object) -> WanExperts:
    """:class:`WanExperts` of two :func:`build_wan` experts of config ``wan`` (defaults: Wan 2.2
    T2V A14B's boundary; give the 14B config for its size)."""
    return WanExperts(build_wan(**wan), build_wan(**wan), boundary_ratio)


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


# ---------------------------------------------------------------------------------- CogVideoX
def per_sample_timesteps(timestep: torch.Tensor, b: int, frames: int, model: str) -> torch.Tensor:
    """``[B]`` from a scalar or ``[B]``; one clear line for per-frame ``[B, T]`` (a model with one
    time embedding per sample cannot take them)."""
    timestep = torch.as_tensor(timestep)
    if timestep.ndim == 0:
        return timestep.expand(b)
    if tuple(timestep.shape) == (b,):
        return timestep
    raise ValueError(f"{model} takes one timestep per sample [B] = [{b}]: per-frame timesteps [B, T] = "
                     f"[{b}, {frames}] are not supported, got {list(timestep.shape)}")


class CogVideoXJointAttention:
    """Attention processor of the CogVideoX blocks (``attn1``): diffusers'
    ``CogVideoXAttnProcessor2_0`` computation (one attention over the caption and video tokens,
    per-head LayerNorm of queries and keys, RoPE on the video tokens only) with the attention
    through :func:`lvdm.models.mmdit.joint_attention`, so that under sequence parallelism the
    video tokens are this rank's chunk and the caption whole on every rank. The RoPE tables come
    as ``[1, N, head_dim]`` (the token axis is where sequence parallelism cuts them)."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask=None, image_rotary_emb=None) -> tuple[torch.Tensor, torch.Tensor]:
        from lvdm.models.mmdit import joint_attention

        if attention_mask is not None:
            raise ValueError("CogVideoXJointAttention takes no attention mask (CogVideoX attends to every token)")

        def project(tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
            q, k, v = (f(tokens).unflatten(2, (attn.heads, -1)).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
            q = q if attn.norm_q is None else attn.norm_q(q)
            return q, (k if attn.norm_k is None else attn.norm_k(k)), v

        q, k, v = project(hidden_states)
        if image_rotary_emb is not None:  # diffusers' tables, pairs interleaved
            cos, sin = (table[:, None] for table in image_rotary_emb)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out, txt_out = joint_attention(q, k, v, *project(encoder_hidden_states), None)
        out, txt_out = (attn.to_out[1](attn.to_out[0](o.transpose(1, 2).flatten(2).type_as(q))) for o in (out, txt_out))
        return out, txt_out


class CogVideoXBackbone(_DiffusersBackbone):
    """Diffusers' ``CogVideoXTransformer3DModel`` (CogVideoX 1.0 2B / 5B and 1.5 text-to-video)
    meeting lvdm's backbone contract. Wraps ``transformer`` as is (its attention processors
    replaced by :class:`CogVideoXJointAttention`); :func:`build_cogvideox` builds one with lvdm's
    initialisation.

    What the adapter maps, as diffusers' ``CogVideoXPipeline`` feeds the model:

    * **latents** ``[B, C, T, H, W]`` are zero-padded to whole ``(pt, p, p)`` patches, passed
      frames first (``[B, T, C, H, W]``, the pipeline's layout) and the prediction cropped back.
    * **timesteps**: the DDPM chain's integer step in ``[0, 1000)`` (the pipeline passes the
      scheduler's ``t``), which is what lvdm's :class:`~lvdm.diffusion.objectives.DDPM` passes;
      one per sample (CogVideoX has one time embedding per sample: per-frame times are refused).
      Its target is ``v`` (``prediction_type="v_prediction"``).
    * **text**: T5 tokens ``[B, L, context_dim]`` concatenated before the video tokens (one joint
      attention). The pipeline pads the caption to 226 tokens and passes T5's outputs at the
      padding too, with no mask: ``context_mask`` is not applied, the caption must come as T5
      encodes the padded tokens; with sincos positions (2B) ``L`` must be ``max_text_seq_length``.
    * **positions**: sincos (2B: inside the model) or RoPE over the video tokens (5B, 1.5),
      computed as the pipeline's ``_prepare_rotary_positional_embeddings`` from the latent grid
      and the config's ``sample_height`` / ``sample_width``.

    Image-to-video CogVideoX (``in_channels`` 32, ``ofs``, learned positions) is refused.
    """

    #: Sequence parallelism cuts the video tokens entering ``transformer_blocks[0]`` with the RoPE
    #: tables; the caption stays whole on every rank (:func:`lvdm.models.mmdit.joint_attention`);
    #: the final LayerNorm's output is gathered (the final adaLN and projection see every token).
    sequence_parallel_plan = SequenceSplit(
        blocks="blocks", tokens="hidden_states", grid=None, gather="final_norm",
        follow_split=("image_rotary_emb",), unit="video token",
    )
    block_class = CogVideoXBlock
    _blocks_attribute = "transformer_blocks"
    micro_conditions: tuple[str, ...] = ()
    #: The positions are the config's (sample size, RoPE or sincos): nothing set by the adapter.
    fixed_position_settings: tuple[str, ...] = ()
    lora_targets = r"transformer\.transformer_blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))"

    def __init__(self, transformer: CogVideoXTransformer3DModel):
        super().__init__()
        config = transformer.config
        if config.ofs_embed_dim or config.use_learned_positional_embeddings or \
                config.in_channels != (config.out_channels or config.in_channels):
            raise ValueError("CogVideoXBackbone adapts text-to-video CogVideoX; image-to-video (in_channels="
                             f"{config.in_channels}, ofs_embed_dim={config.ofs_embed_dim}, learned positions="
                             f"{config.use_learned_positional_embeddings}) is not adapted")
        self._adopt(transformer, config.text_embed_dim, CogVideoXJointAttention)
        self.patch_size = (int(config.patch_size_t or 1), int(config.patch_size), int(config.patch_size))

    @property
    def final_norm(self) -> nn.Module:
        """The final LayerNorm (per token; the adaLN after it reads the time embedding)."""
        return self.transformer.norm_final

    def _rotary(self, grid: tuple[int, int, int], device: torch.device) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The pipeline's RoPE tables for a latent ``grid`` (after patching) as ``[1, N, head_dim]``
        (None: sincos positions, added inside the model)."""
        config = self.transformer.config
        if not config.use_rotary_positional_embeddings:
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        t, h, w = grid
        base_h, base_w = config.sample_height // config.patch_size, config.sample_width // config.patch_size
        if config.patch_size_t is None:  # CogVideoX 1.0
            crops = get_resize_crop_region_for_grid((h, w), base_w, base_h)
            tables = get_3d_rotary_pos_embed(config.attention_head_dim, crops, (h, w), t, device=device)
        else:  # CogVideoX 1.5
            tables = get_3d_rotary_pos_embed(config.attention_head_dim, None, (h, w), t, grid_type="slice",
                                             max_size=(base_h, base_w), device=device)
        return tuple(table[None] for table in tables)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict CogVideoX's target ``v`` for latents ``x`` ``[B, C, T, H, W]`` at DDPM steps
        ``timestep`` ``[B]`` from T5 tokens ``context`` ``[B, L, context_dim]`` (``context_mask`` is
        not applied: see the class docstring)."""
        check_latents(x, self.in_channels)
        b, _, *size = x.shape
        grid = patch_grid(self.patch_size, size)
        timestep = per_sample_timesteps(timestep, b, grid[0], "CogVideoX")
        _check_context(context, b, self.context_dim, "CogVideoX")
        config = self.transformer.config
        if not config.use_rotary_positional_embeddings and context.shape[1] != config.max_text_seq_length:
            raise ValueError(f"CogVideoX with sincos positions takes exactly max_text_seq_length="
                             f"{config.max_text_seq_length} caption tokens, got {context.shape[1]}")
        hidden = pad_to_patches(x, self.patch_size).transpose(1, 2)  # [B, T, C, H, W]
        out = self.transformer(hidden, context, timestep, image_rotary_emb=self._rotary(grid, x.device),
                               return_dict=False)[0]
        return out.transpose(1, 2)[:, :, : size[0], : size[1], : size[2]]

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract): patch and caption embedding, the time MLP, per block
        two adaLN projections of the time embedding, one attention and one feed-forward (4×) over
        caption and video tokens together, the final adaLN and projection."""
        if text_len <= 0:
            raise ValueError("CogVideoX is text-conditional: give text_len > 0")
        config = self.transformer.config
        t, h, w = patch_grid(self.patch_size, latent_thw)
        d, b, n, e = self.hidden_size, batch_size, t * h * w, int(config.time_embed_dim)
        patch, joint = math.prod(self.patch_size), t * h * w + int(text_len)
        out: dict[str, int] = {name: 0 for name in BLOCK_PARTS}
        out["patch_embed"] = b * (mm(n, self.in_channels * patch, d) + mm(int(text_len), self.context_dim, d))
        out["timestep_embed"] = b * (mm(1, d, e) + mm(1, e, e))
        for _ in self.blocks:
            out["adaln"] += 2 * b * mm(1, e, 6 * d)
            attention_flops(out, b, 1, joint, d)
            mlp_flops(out, b, joint, d, 4 * d)
        out["final_layer"] = b * (mm(1, e, 2 * d) + mm(n, d, self.out_channels * patch))
        return out


def build_cogvideox(
    num_attention_heads: int = 30,
    attention_head_dim: int = 64,
    in_channels: int = 16,
    out_channels: int = 16,
    time_embed_dim: int = 512,
    text_embed_dim: int = 4096,
    num_layers: int = 30,
    sample_width: int = 90,
    sample_height: int = 60,
    patch_size: int = 2,
    patch_size_t: Optional[int] = None,
    max_text_seq_length: int = 226,
    use_rotary_positional_embeddings: bool = False,
    patch_bias: bool = True,
) -> CogVideoXBackbone:
    """A :class:`CogVideoXBackbone` around a new diffusers ``CogVideoXTransformer3DModel``
    (defaults: CogVideoX-2b's config; 5b: 48 heads, 42 layers, RoPE) with lvdm's from-scratch
    initialisation on top of diffusers': the attention output, feed-forward output and final
    projections are zero, so every block starts as the identity and the model predicts 0."""
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, in_channels=in_channels,
        out_channels=out_channels, time_embed_dim=time_embed_dim, text_embed_dim=text_embed_dim,
        num_layers=num_layers, sample_width=sample_width, sample_height=sample_height, patch_size=patch_size,
        patch_size_t=patch_size_t, max_text_seq_length=max_text_seq_length,
        use_rotary_positional_embeddings=use_rotary_positional_embeddings, patch_bias=patch_bias,
    )
    for block in transformer.transformer_blocks:
        for linear in (block.attn1.to_out[0], block.ff.net[2]):
            _zero(linear)
    _zero(transformer.proj_out)
    return CogVideoXBackbone(transformer)


# ------------------------------------------------------------------------------ HunyuanVideo
class HunyuanVideoJointAttention:
    """Attention processor of HunyuanVideo's dual- and single-stream blocks (``attn``): diffusers'
    ``HunyuanVideoAttnProcessor2_0`` computation (per-stream or shared projections, QK-RMSNorm,
    RoPE on the video tokens, the caption's padding masked as keys) with the attention through
    :func:`lvdm.models.mmdit.joint_attention` (video tokens this rank's chunk under sequence
    parallelism, the caption whole). The caption's key mask is the last ``L`` columns of the
    model's ``[B, 1, 1, N + L]`` mask; the RoPE tables come as ``[1, N, head_dim]``."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, image_rotary_emb=None) -> tuple[torch.Tensor, torch.Tensor]:
        from lvdm.models.mmdit import joint_attention

        if encoder_hidden_states is None:
            raise ValueError("HunyuanVideoJointAttention serves the joint (video + caption) attention only")
        length = encoder_hidden_states.shape[1]
        txt_mask = None if attention_mask is None else attention_mask.reshape(attention_mask.shape[0], -1)[:, -length:]
        dual = attn.add_q_proj is not None

        def project(tokens: torch.Tensor, text: bool) -> tuple[torch.Tensor, ...]:
            own = text and dual
            linears = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if own else (attn.to_q, attn.to_k, attn.to_v)
            q, k, v = (f(tokens).unflatten(2, (attn.heads, -1)).transpose(1, 2) for f in linears)
            norm_q, norm_k = (attn.norm_added_q, attn.norm_added_k) if own else (attn.norm_q, attn.norm_k)
            return norm_q(q), norm_k(k), v

        q, k, v = project(hidden_states, False)
        if image_rotary_emb is not None:  # diffusers' tables, pairs interleaved
            cos, sin = (table[:, None] for table in image_rotary_emb)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out, txt_out = joint_attention(q, k, v, *project(encoder_hidden_states, True), txt_mask)
        out, txt_out = (o.transpose(1, 2).flatten(2).type_as(q) for o in (out, txt_out))
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            txt_out = attn.to_add_out(txt_out)
        return out, txt_out


def _rope_tables_per_token(module: nn.Module, args: tuple, tables: tuple) -> tuple:
    """Forward hook of HunyuanVideo's ``rope``: its ``[N, head_dim]`` tables as ``[1, N, head_dim]``."""
    return tuple(table[None] for table in tables)


class HunyuanVideoBlock(abc.ABC):
    """The checkpoint and compile unit of :class:`HunyuanVideoBackbone`: diffusers' dual- and
    single-stream blocks (registered as virtual subclasses: ``isinstance`` holds for both)."""


HunyuanVideoBlock.register(HunyuanVideoTransformerBlock)
HunyuanVideoBlock.register(HunyuanVideoSingleTransformerBlock)


class HunyuanVideoBackbone(_DiffusersBackbone):
    """Diffusers' ``HunyuanVideoTransformer3DModel`` (HunyuanVideo text-to-video) meeting lvdm's
    backbone contract, weights unchanged (lvdm's own :class:`~lvdm.models.mmdit.MMDiT` is the
    same network written natively). What the adapter maps, as ``HunyuanVideoPipeline`` feeds it:

    * **latents** ``[B, C, T, H, W]`` zero-padded to whole patches, the prediction cropped back.
    * **timesteps** ``t · 1000`` (the scheduler's ``σ · 1000``: lvdm's ``RectifiedFlow``), one per
      sample (one modulation per sample: per-frame times are refused).
    * **text**: LLaVA-Llama tokens ``[B, L, context_dim]`` with ``context_mask`` (the pipeline's
      ``prompt_attention_mask``; real tokens first), refined by the model's token refiner.
    * **micro-conditions** (MMDiT's names): ``pooled_text`` ``[B, pooled_projection_dim]`` (CLIP-L's
      pooled caption, ``pooled_projections``; default zeros) and ``guidance`` ``[B]`` (the distilled
      guidance scale, default ``default_guidance``; passed × 1000 as the pipeline does).

    The RoPE tables of the model's ``rope`` are reshaped to ``[1, N, head_dim]`` (a forward hook) so
    that sequence parallelism cuts them with the video tokens.
    """

    #: Sequence parallelism cuts the video tokens entering the first dual-stream block with the
    #: RoPE tables (``freqs_cis`` of the dual-, ``image_rotary_emb`` of the single-stream blocks); the
    #: caption stays whole; the final norm's output is gathered.
    sequence_parallel_plan = SequenceSplit(
        blocks="blocks", tokens="hidden_states", grid=None, gather="final_norm",
        follow_split=("freqs_cis", "image_rotary_emb"), unit="video token",
    )
    block_class = HunyuanVideoBlock
    _blocks_attribute = ("transformer_blocks", "single_transformer_blocks")
    _attention_attribute = "attn"
    micro_conditions = ("pooled_text", "guidance")
    fixed_position_settings: tuple[str, ...] = ()
    lora_targets = (r"transformer\.(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj"
                    r"|add_v_proj|to_add_out)|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))"
                    r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp|proj_out))")

    def __init__(self, transformer: HunyuanVideoTransformer3DModel, default_guidance: float = 6.0):
        super().__init__()
        config = transformer.config
        if config.image_condition_type is not None:
            raise ValueError(f"HunyuanVideoBackbone adapts text-to-video HunyuanVideo; image_condition_type="
                             f"{config.image_condition_type!r} is not adapted")
        self._adopt(transformer, config.text_embed_dim, HunyuanVideoJointAttention)
        self.patch_size = (int(config.patch_size_t), int(config.patch_size), int(config.patch_size))
        self.default_guidance = float(default_guidance)
        transformer.rope.register_forward_hook(_rope_tables_per_token)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None, pooled_text: Optional[torch.Tensor] = None,
                guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict HunyuanVideo's target (the velocity ``ε - x0``) for latents ``x`` at ``timestep``
        ``[B]`` (``t · 1000``) from tokens ``context`` with ``context_mask`` (see the class docstring)."""
        check_latents(x, self.in_channels)
        b, _, *size = x.shape
        config = self.transformer.config
        timestep = per_sample_timesteps(timestep, b, patch_grid(self.patch_size, size)[0], "HunyuanVideo")
        _check_context(context, b, self.context_dim, "HunyuanVideo")
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device) if context_mask is None else context_mask
        if pooled_text is None:
            pooled_text = x.new_zeros(b, config.pooled_projection_dim)
        if guidance is None:
            guidance = x.new_full((b,), self.default_guidance)
        guidance = torch.as_tensor(guidance, dtype=x.dtype, device=x.device).reshape(-1).expand(b) * 1000.0
        out = self.transformer(pad_to_patches(x, self.patch_size), timestep, context, mask, pooled_text,
                               guidance if config.guidance_embeds else None, return_dict=False)[0]
        return out[:, :, : size[0], : size[1], : size[2]]

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """lvdm's :class:`~lvdm.models.mmdit.MMDiT` FLOP model of the same network (built on meta
        from the config by :func:`lvdm.models.convert.hunyuan.mmdit_kwargs`), less one ``D → 3D``
        modulation per single-stream block: diffusers computes it once for the joined sequence,
        lvdm's MMDiT once per stream."""
        from lvdm.models.convert.hunyuan import mmdit_kwargs
        from lvdm.models.mmdit import MMDiT

        with torch.device("meta"):
            native = MMDiT(**mmdit_kwargs(dict(self.transformer.config)))
        out = native.forward_flops(latent_thw, text_len, batch_size)
        d = self.hidden_size
        out["adaln"] -= len(self.transformer.single_transformer_blocks) * batch_size * mm(1, d, 3 * d)
        return out


def build_hunyuanvideo(default_guidance: float = 6.0, **config: object) -> HunyuanVideoBackbone:
    """A :class:`HunyuanVideoBackbone` around a new diffusers ``HunyuanVideoTransformer3DModel``
    (``config``: its arguments; defaults: HunyuanVideo's 13B) with lvdm's from-scratch
    initialisation on top of diffusers': every residual branch's output projection and the final
    projection are zero, so every block starts as the identity and the model predicts 0."""
    transformer = HunyuanVideoTransformer3DModel(**config)
    for block in transformer.transformer_blocks:
        for linear in (block.attn.to_out[0], block.attn.to_add_out, block.ff.net[2], block.ff_context.net[2]):
            _zero(linear)
    for block in transformer.single_transformer_blocks:
        _zero(block.proj_out)
    _zero(transformer.proj_out)
    return HunyuanVideoBackbone(transformer, default_guidance)


# ---------------------------------------------------------------------------------------- Mochi
class MochiJointAttention:
    """Attention processor of Mochi's asymmetric dual-stream blocks (``attn1``): diffusers'
    ``MochiAttnProcessor2_0`` computation (video projections of width ``D``, caption projections
    from the narrower text stream, QK-RMSNorm, RoPE on the video tokens) with the attention through
    :func:`lvdm.models.mmdit.joint_attention` and the caption's padding masked as keys (diffusers
    drops it per sample: the same video outputs). The RoPE tables come as ``[1, N, heads, hd / 2]``."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb=None) -> tuple[torch.Tensor, torch.Tensor]:
        from lvdm.models.mmdit import joint_attention

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(2, (attn.heads, -1)).transpose(1, 2)  # [B, H, L, hd]

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        txt_q, txt_k = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
        txt_q, txt_k = attn.norm_added_q(txt_q), attn.norm_added_k(txt_k)
        if image_rotary_emb is not None:  # [1, N, H, hd/2] per pair → [1, H, N, hd], pairs interleaved
            cos, sin = (table.transpose(1, 2).repeat_interleave(2, dim=-1) for table in image_rotary_emb)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out, txt_out = joint_attention(q, k, v, txt_q, txt_k, heads(attn.add_v_proj(encoder_hidden_states)),
                                       attention_mask.bool())
        out, txt_out = (o.transpose(1, 2).flatten(2).type_as(q) for o in (out, txt_out))
        out = attn.to_out[1](attn.to_out[0](out))
        return out, (attn.to_add_out(txt_out) if hasattr(attn, "to_add_out") else txt_out)


class _MochiRoPE(nn.Module):
    """diffusers' ``MochiRoPE`` with its tables as ``[1, N, heads, hd / 2]`` (the token axis where
    sequence parallelism cuts); on meta (FLOP counting: its float32 autocast cannot run there) the
    same position × frequency product without the autocast."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.rope = rope

    def forward(self, pos_frequencies: torch.Tensor, num_frames: int, height: int, width: int,
                device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        if pos_frequencies.is_meta:
            positions = self.rope._get_positions(num_frames, height, width, device, dtype)
            freqs = torch.einsum("nd,dhf->nhf", positions.float(), pos_frequencies.float())
            tables = (freqs.cos(), freqs.sin())
        else:
            tables = self.rope(pos_frequencies, num_frames, height, width, device=device, dtype=dtype)
        return tuple(table[None] for table in tables)


class MochiBackbone(_DiffusersBackbone):
    """Diffusers' ``MochiTransformer3DModel`` (Mochi 1) meeting lvdm's backbone contract, weights
    unchanged; fed as ``MochiPipeline`` feeds it:

    * **latents** ``[B, C, T, H, W]`` zero-padded to whole ``(1, p, p)`` patches and cropped back.
    * **timesteps**: Mochi's scheduler inverts its sigmas: the model takes ``1000 · (1 − σ)`` and
      predicts ``x0 − ε``. lvdm's ``RectifiedFlow`` passes ``σ · 1000`` (its default
      ``time_scale``), so the adapter passes ``1000 − timestep``; train and sample it with
      ``RectifiedFlow(target="x0_minus_eps")``. One timestep per sample (per-frame times refused).
    * **text**: T5 tokens ``[B, L, context_dim]`` with ``context_mask`` (the pipeline pads to 256 and
      passes the tokenizer's mask): pooled by the model's attention pool, projected to the text
      stream's width; masked as keys.

    RoPE: the model's learned frequencies; ``rope`` is wrapped (:class:`_MochiRoPE`, no weights) so
    that its tables come as ``[1, N, heads, hd / 2]`` and sequence parallelism cuts them with the
    video tokens.
    """

    sequence_parallel_plan = SequenceSplit(
        blocks="blocks", tokens="hidden_states", grid=None, gather="final_norm",
        follow_split=("image_rotary_emb",), unit="video token",
    )
    block_class = MochiTransformerBlock
    _blocks_attribute = "transformer_blocks"
    micro_conditions: tuple[str, ...] = ()
    fixed_position_settings: tuple[str, ...] = ()
    lora_targets = (r"transformer\.transformer_blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj"
                    r"|add_v_proj|to_add_out)|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))")

    def __init__(self, transformer: MochiTransformer3DModel):
        super().__init__()
        config = transformer.config
        self._adopt(transformer, config.text_embed_dim, MochiJointAttention)
        self.patch_size = (1, int(config.patch_size), int(config.patch_size))
        transformer.rope = _MochiRoPE(transformer.rope)  # no weights: the state dict is unchanged

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict Mochi's target ``x0 − ε`` for latents ``x`` at ``timestep`` ``[B]`` (``σ · 1000``)
        from T5 tokens ``context`` with ``context_mask`` (see the class docstring)."""
        check_latents(x, self.in_channels)
        b, _, *size = x.shape
        timestep = per_sample_timesteps(timestep, b, size[0], "Mochi")
        _check_context(context, b, self.context_dim, "Mochi")
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device) if context_mask is None else context_mask
        out = self.transformer(pad_to_patches(x, self.patch_size), context, 1000.0 - timestep, mask,
                               return_dict=False)[0]
        return out[:, :, : size[0], : size[1], : size[2]]

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract): patch embedding, the time MLP, the caption's attention
        pool and projection, the RoPE's position × frequency product, per block the adaLN
        projections, the joint attention (video width ``D``, caption width ``P``) and the SwiGLU
        feed-forwards (the last block updates no caption), the final adaLN and projection."""
        if text_len <= 0:
            raise ValueError("Mochi is text-conditional: give text_len > 0")
        config = self.transformer.config
        t, h, w = patch_grid(self.patch_size, latent_thw)
        d, b, n, L = self.hidden_size, batch_size, t * h * w, int(text_len)
        c, p, e = self.context_dim, int(config.pooled_projection_dim), int(config.time_embed_dim)
        out: dict[str, int] = {name: 0 for name in BLOCK_PARTS}
        out["patch_embed"] = b * mm(n, self.in_channels * math.prod(self.patch_size), d)
        out["timestep_embed"] = b * (mm(1, e, d) + mm(1, d, d))
        out["text_proj"] = b * (mm(L + 1, c, 2 * c) + mm(1, c, c) + 4 * (L + 1) * c + mm(1, c, d) + mm(L, c, p))
        out["rope"] = mm(n, 3, d // 2)
        for block in self.blocks:
            last = block.context_pre_only
            out["adaln"] += b * (mm(1, d, 4 * d) + mm(1, d, p if last else 4 * p))
            out["qkv_proj"] += b * (mm(n, d, 3 * d) + mm(L, p, 3 * d) + mm(n, d, d) + (0 if last else mm(L, d, p)))
            out["self_attention"] += b * 4 * (n + L) ** 2 * d
            mlp_flops(out, b, n, d, 2 * block.ff_inner_dim)
            out["mlp"] -= b * mm(n, block.ff_inner_dim, d)  # SwiGLU: D → 2F, then F → D
            if not last:
                mlp_flops(out, b, L, p, 2 * block.ff_context_inner_dim)
                out["mlp"] -= b * mm(L, block.ff_context_inner_dim, p)
        out["final_layer"] = b * (mm(1, d, 2 * d) + mm(n, d, self.out_channels * math.prod(self.patch_size)))
        return out


def build_mochi(**config: object) -> MochiBackbone:
    """A :class:`MochiBackbone` around a new diffusers ``MochiTransformer3DModel`` (``config``: its
    arguments; defaults: Mochi 1 preview's 10B) with lvdm's from-scratch initialisation on top of
    diffusers': the attention outputs, feed-forward outputs and final projection are zero, so every
    block starts as the identity and the model predicts 0."""
    transformer = MochiTransformer3DModel(**config)
    for block in transformer.transformer_blocks:
        for linear in (block.attn1.to_out[0], block.ff.net[2], getattr(block.attn1, "to_add_out", None),
                       None if block.ff_context is None else block.ff_context.net[2]):
            if linear is not None:
                nn.init.zeros_(linear.weight)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
    _zero(transformer.proj_out)
    return MochiBackbone(transformer)
