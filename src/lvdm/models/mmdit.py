"""MMDiT: the dual-stream → single-stream video transformer of HunyuanVideo and Open-Sora 2.0
(pure torch).

The layout of HunyuanVideo (Tencent 2024; diffusers' ``HunyuanVideoTransformer3DModel``):

* **patch embedding**: a 3D convolution over ``(pt, ph, pw)`` patches → video tokens ``[B, N, D]``;
* **conditioning vector** ``vec``: timestep + guidance (distilled guidance scale) + pooled text
  (CLIP-L's pooled output), each an MLP, summed; it modulates every block (adaLN-zero);
* **token refiner** (:class:`TokenRefiner`): the text tokens are projected to ``D`` and refined by
  a few self-attention blocks over the (masked) caption, gated by timestep + mean text token;
* **double-stream blocks** (:class:`DoubleStreamBlock`): video and text keep separate norms,
  QKV, QK-RMSNorm, output projections and MLPs (one :class:`Stream` each) and meet in one joint
  attention (text keys masked where padded);
* **single-stream blocks** (:class:`SingleStreamBlock`): one shared ``linear1`` (QKV and MLP
  input in parallel) and ``linear2`` (attention and MLP output) for both;
* **3D RoPE** on the video queries and keys only (axes dims ``(16, 56, 56)``, θ = 256); text
  tokens carry no position;
* **final adaLN layer** and unpatchify.

Open-Sora 2.0 (hpcaitech 2025, Flux-derived) is the same network with these options:
``refiner_depth=0`` (the text tokens only pass one linear, Flux's ``txt_in``), ``text_mask=False``
(it attends to every T5 token, padding included), ``rope_theta=10000``, no guidance embedding,
and ``image_condition_channels=17``: its ``cond_in`` embeds a mask channel plus the masked
latents of the given frames (image-to-video, ``image_condition``; zeros: text-to-video), added to
the video tokens. Flux puts the text before the video and gives the text tokens RoPE position 0
(the identity rotation): neither changes an output, see below.

Joint attention is a set operation (no causal mask), so the order in which video and text are
concatenated does not change any output: both streams are kept as two tensors throughout, which
is what lets sequence parallelism cut the video tokens only (:func:`joint_attention`).

Conditioning beyond the text tokens arrives as micro-conditions (the backbone contract):
``pooled_text`` ``[B, pooled_text_dim]`` (CLIP's pooled caption; zeros when not given),
``guidance`` ``[B]`` (the guidance scale a distilled model is asked for, e.g. 6.0; multiplied by
``guidance_scale_factor`` = 1000 as diffusers' pipeline does; ``default_guidance`` when not given)
and ``image_condition`` ``[B, image_condition_channels, T, H, W]`` (Open-Sora 2.0's ``cond``).

Per-frame timesteps ``[B, T]`` modulate each latent frame's tokens with its own time; the text
stream and the refiner take the largest time of the sample (the noisy frames' time, as
HunyuanVideo-I2V's token replacement keeps the text at the noise level).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lvdm.models.contract import given_frames_condition
from lvdm.models.embeddings import PatchEmbed3D, TimestepEmbedder, check_latents
from lvdm.models.flops import BLOCK_PARTS, attention_flops, mlp_flops, mm, patch_grid
from lvdm.models.layers import (Attention, FinalLayer, Mlp, RMSNorm, gated, init_linears_and_patches, modulate,
                               pad_to_patches, unpatchify, zero_final_layer)
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.models.rope import apply_rope, rope_3d
from lvdm.ops.attention import attention, gather_sequence, sequence_parallel_size, shard_sequence

Rope = tuple[torch.Tensor, torch.Tensor]

__all__ = ["MMDiT", "DoubleStreamBlock", "SingleStreamBlock", "TokenRefiner", "joint_attention"]


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, N, D]`` → ``[B, heads, N, D / heads]``."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _layer_norm(d: int) -> nn.LayerNorm:
    """The pre-norm of a modulated branch (no affine: adaLN scales and shifts it)."""
    return nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, txt_q: torch.Tensor, txt_k: torch.Tensor,
                    txt_v: torch.Tensor, txt_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention over video tokens ``q, k, v`` ``[B, H, N, hd]`` and text tokens ``txt_*``
    ``[B, H, L, hd]`` (keys masked by ``txt_mask`` ``[B, L]``, True = real); returns the video and
    text outputs. Under sequence parallelism the video tokens are this rank's chunk and the text
    tokens are whole on every rank: each rank takes its chunk of the (padded) text too, the
    sharded attention sees every rank's video and text keys, and the text outputs are gathered."""
    b, _, n, _ = q.shape
    length = txt_q.shape[2]
    if txt_mask is None:
        txt_mask = torch.ones(b, length, dtype=torch.bool, device=q.device)
    size = sequence_parallel_size()
    if size > 1:
        pad = -length % size
        txt_q, txt_k, txt_v = (shard_sequence(F.pad(t, (0, 0, 0, pad)), 2) for t in (txt_q, txt_k, txt_v))
        txt_mask = shard_sequence(F.pad(txt_mask, (0, pad), value=False), 1)
    keys = torch.cat([txt_mask.new_ones(b, n), txt_mask], dim=1)
    out = attention(torch.cat([q, txt_q], 2), torch.cat([k, txt_k], 2), torch.cat([v, txt_v], 2),
                    key_mask=keys, sharded=True)
    out, txt_out = out.split([n, txt_q.shape[2]], dim=2)
    if size > 1:
        txt_out = gather_sequence(txt_out, 2)[:, :, :length]
    return out, txt_out


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, hd]`` → ``[B, N, H·hd]``."""
    return x.transpose(1, 2).flatten(2)


class Stream(nn.Module):
    """One stream (video or text) of a :class:`DoubleStreamBlock`: its adaLN-zero modulation (six
    rows: shift, scale, gate of attention and MLP), QKV with QK-RMSNorm, output projection, MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.norm1 = _layer_norm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm = RMSNorm(hidden_size // num_heads)
        self.k_norm = RMSNorm(hidden_size // num_heads)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = _layer_norm(hidden_size)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def attention_input(self, x: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Normalised, modulated tokens → q, k, v ``[B, H, N, hd]`` (q and k RMS-normalised)."""
        q, k, v = self.qkv(modulate(self.norm1(x), mods[0], mods[1])).chunk(3, dim=-1)
        return self.q_norm(_heads(q, self.num_heads)), self.k_norm(_heads(k, self.num_heads)), _heads(v, self.num_heads)

    def residuals(self, x: torch.Tensor, attn_out: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The gated attention and MLP residual branches."""
        x = x + gated(self.proj(_merge_heads(attn_out)), mods[2])
        return x + gated(self.mlp(modulate(self.norm2(x), mods[3], mods[4])), mods[5])


class MMDiTBlock(nn.Module):
    """The common base of the double- and single-stream blocks (the backbone contract's
    checkpoint / compile unit). ``forward(x, txt, vec, txt_vec, txt_mask, rope)``: video tokens
    ``x`` ``[B, N, D]``, text tokens ``txt`` ``[B, L, D]``, their modulation vectors ``vec``
    ``[B, T or 1, D]`` (per frame or per sample) and ``txt_vec`` ``[B, D]``, the text key mask,
    the video RoPE ``(cos, sin)`` ``[1, N, hd]``; returns the new ``(x, txt)``."""


class DoubleStreamBlock(MMDiTBlock):
    """Video and text with their own weights (:class:`Stream`), meeting in a joint attention."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.video = Stream(hidden_size, num_heads, mlp_ratio)
        self.text = Stream(hidden_size, num_heads, mlp_ratio)

    def modulated_input(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The video stream's normalised, modulated input (step caching's indicator, TeaCache's)."""
        shift, scale = self.video.adaLN_modulation(vec).chunk(6, dim=-1)[:2]
        return modulate(self.video.norm1(x), shift, scale)

    def forward(self, x: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, txt_vec: torch.Tensor,
                txt_mask: Optional[torch.Tensor], rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        mods = self.video.adaLN_modulation(vec).chunk(6, dim=-1)  # 6 × [B, T or 1, D]
        txt_mods = self.text.adaLN_modulation(txt_vec).chunk(6, dim=-1)  # 6 × [B, D]
        q, k, v = self.video.attention_input(x, mods)  # [B, H, N, hd]
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out, txt_out = joint_attention(q, k, v, *self.text.attention_input(txt, txt_mods), txt_mask)
        return self.video.residuals(x, out, mods), self.text.residuals(txt, txt_out, txt_mods)


class SingleStreamBlock(MMDiTBlock):
    """Both streams through the same weights: ``linear1`` gives QKV and the MLP input in
    parallel, ``linear2`` maps the attention output and the activated MLP input back; one
    (shift, scale, gate) modulation."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads, self.mlp_hidden = num_heads, int(hidden_size * mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 3 * hidden_size))
        self.norm = _layer_norm(hidden_size)
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden)
        self.q_norm = RMSNorm(hidden_size // num_heads)
        self.k_norm = RMSNorm(hidden_size // num_heads)
        self.act = nn.GELU(approximate="tanh")
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden, hidden_size)

    def _inputs(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        """Tokens → (q, k, v ``[B, H, N, hd]``, MLP input ``[B, N, mlp_hidden]``)."""
        d = x.shape[-1]
        qkv, hidden = self.linear1(modulate(self.norm(x), shift, scale)).split([3 * d, self.mlp_hidden], dim=-1)
        q, k, v = (_heads(t, self.num_heads) for t in qkv.chunk(3, dim=-1))
        return self.q_norm(q), self.k_norm(k), v, hidden

    def modulated_input(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The normalised, modulated video tokens (step caching's indicator)."""
        shift, scale = self.adaLN_modulation(vec).chunk(3, dim=-1)[:2]
        return modulate(self.norm(x), shift, scale)

    def forward(self, x: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, txt_vec: torch.Tensor,
                txt_mask: Optional[torch.Tensor], rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.adaLN_modulation(vec).chunk(3, dim=-1)  # 3 × [B, T or 1, D]
        txt_shift, txt_scale, txt_gate = self.adaLN_modulation(txt_vec).chunk(3, dim=-1)  # 3 × [B, D]
        q, k, v, hidden = self._inputs(x, shift, scale)
        txt_q, txt_k, txt_v, txt_hidden = self._inputs(txt, txt_shift, txt_scale)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out, txt_out = joint_attention(q, k, v, txt_q, txt_k, txt_v, txt_mask)
        x = x + gated(self.linear2(torch.cat([_merge_heads(out), self.act(hidden)], -1)), gate)
        txt = txt + gated(self.linear2(torch.cat([_merge_heads(txt_out), self.act(txt_hidden)], -1)), txt_gate)
        return x, txt


class RefinerBlock(nn.Module):
    """HunyuanVideo's individual token refiner block: self-attention over the caption (affine
    LayerNorms, no QK-norm) and a SiLU MLP, each gated by the refiner's conditioning vector."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act=nn.SiLU())
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        gate_attn, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)  # 2 × [B, 1, D]
        x = x + gate_attn * self.attn(self.norm1(x), key_mask=key_mask)
        return x + gate_mlp * self.mlp(self.norm2(x))


class TokenRefiner(nn.Module):
    """Text tokens ``[B, L, context_dim]`` → refined tokens ``[B, L, D]``: projected in, then
    refined by :class:`RefinerBlock` s conditioned on the timestep plus the masked mean of the
    raw tokens. Every query attends to the real tokens (the first token always counts as real,
    so an all-padding caption stays defined, as in HunyuanVideo)."""

    def __init__(self, context_dim: int, hidden_size: int, num_heads: int, depth: int = 2):
        super().__init__()
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.c_embedder = Mlp(context_dim, hidden_size, hidden_size, act=nn.SiLU())
        self.proj_in = nn.Linear(context_dim, hidden_size)
        self.blocks = nn.ModuleList(RefinerBlock(hidden_size, num_heads) for _ in range(depth))

    def forward(self, context: torch.Tensor, mask: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        weights = mask[..., None].float()  # [B, L, 1]
        pooled = ((context.float() * weights).sum(1) / weights.sum(1)).to(context.dtype)  # [B, context_dim]
        c = self.t_embedder(timestep) + self.c_embedder(pooled)  # [B, D]
        keys = mask.clone()
        keys[:, 0] = True
        x = self.proj_in(context)  # [B, L, D]
        for block in self.blocks:
            x = block(x, c, keys)
        return x


class MMDiT(nn.Module):
    """The MMDiT backbone (HunyuanVideo's layout; see the module docstring).

    Args:
        in_channels: latent channels (HunyuanVideo: 16).
        patch_size: ``(pt, ph, pw)``; an int means ``(1, p, p)``.
        hidden_size, num_heads: token width and attention heads (HunyuanVideo: 3072, 24).
        depth_double, depth_single: double- and single-stream blocks (20, 40).
        mlp_ratio: MLP width over ``hidden_size`` (4).
        context_dim: width of the text tokens (HunyuanVideo's LLaVA-Llama, Open-Sora 2.0's T5-XXL: 4096).
        refiner_depth: token refiner blocks (2); 0: one linear instead (Open-Sora 2.0).
        text_mask: padded text tokens are masked out of attention (HunyuanVideo); False: every
            text token is a key whatever ``context_mask`` says (Open-Sora 2.0).
        image_condition_channels: channels of the ``image_condition`` latents embedded and added to
            the video tokens (Open-Sora 2.0: 17, a mask and 16 latent channels); 0 for none.
        pooled_text_dim: width of the pooled text vector (CLIP-L: 768); 0 for none.
        guidance_embed: a guidance-scale embedding (guidance-distilled models).
        guidance_scale_factor: the guidance micro-condition is multiplied by this before its
            sinusoidal code (1000: diffusers' HunyuanVideo pipeline).
        default_guidance: the guidance scale when ``forward`` is given none (6.0: the
            pipeline's default).
        rope_theta: RoPE base (256).
        rope_axes_dims: head channels of the time, height and width parts of the RoPE
            (``(16, 56, 56)``, summing to ``hidden_size / num_heads``).
    """

    #: The checkpoint / compile unit: both block kinds derive from it.
    block_class = MMDiTBlock

    #: Sequence parallelism cuts the video tokens ``x`` entering the first double-stream block
    #: into equal chunks (whole frames when the timesteps are per frame: the per-frame
    #: modulations ``vec`` / ``c`` and the RoPE tables are cut alike) and gathers the final
    #: layer's output; the text tokens stay whole on every rank (:func:`joint_attention`).
    sequence_parallel_plan = SequenceSplit(
        blocks=("double_blocks", "single_blocks"), tokens="x", grid=None, gather="final_layer",
        follow_split=("vec", "rope", "c"), unit="video token",
    )

    #: ``pooled_text``, ``guidance`` and ``image_condition`` (see the module docstring).
    micro_conditions = ("pooled_text", "guidance", "image_condition")

    #: Settings of the non-learned rotary code (``init_from`` refuses weights trained under others).
    fixed_position_settings = ("rope_theta", "rope_axes_dims")

    #: Linears LoRA may adapt: attention and MLP projections of the double- and single-stream blocks.
    lora_targets = r"(double|single)_blocks\.\d+\.(\w+\.)*(qkv|proj|fc1|fc2|linear1|linear2)"

    def __init__(
        self,
        in_channels: int = 16,
        patch_size: int | Sequence[int] = (1, 2, 2),
        hidden_size: int = 3072,
        num_heads: int = 24,
        depth_double: int = 20,
        depth_single: int = 40,
        mlp_ratio: float = 4.0,
        context_dim: int = 4096,
        refiner_depth: int = 2,
        text_mask: bool = True,
        image_condition_channels: int = 0,
        pooled_text_dim: int = 768,
        guidance_embed: bool = True,
        guidance_scale_factor: float = 1000.0,
        default_guidance: float = 6.0,
        rope_theta: float = 256.0,
        rope_axes_dims: Sequence[int] = (16, 56, 56),
    ):
        super().__init__()
        if isinstance(patch_size, int):
            patch_size = (1, patch_size, patch_size)
        if hidden_size % num_heads or sum(rope_axes_dims) != hidden_size // num_heads:
            raise ValueError(f"MMDiT: rope_axes_dims {tuple(rope_axes_dims)} must sum to the head dimension "
                             f"hidden_size / num_heads = {hidden_size} / {num_heads}")
        self.in_channels, self.out_channels = in_channels, in_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        self.hidden_size, self.num_heads, self.context_dim = hidden_size, num_heads, context_dim
        self.pooled_text_dim, self.guidance_embed = pooled_text_dim, guidance_embed
        self.text_mask, self.image_condition_channels = text_mask, image_condition_channels
        self.guidance_scale_factor, self.default_guidance = float(guidance_scale_factor), float(default_guidance)
        self.rope_theta, self.rope_axes_dims = float(rope_theta), tuple(int(d) for d in rope_axes_dims)

        self.x_embedder = PatchEmbed3D(in_channels, hidden_size, self.patch_size)
        if image_condition_channels:
            self.cond_embedder = PatchEmbed3D(image_condition_channels, hidden_size, self.patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        if guidance_embed:
            self.guidance_embedder = TimestepEmbedder(hidden_size)
        if pooled_text_dim:
            self.pooled_text_embedder = Mlp(pooled_text_dim, hidden_size, hidden_size, act=nn.SiLU())
        self.context_embedder = (TokenRefiner(context_dim, hidden_size, num_heads, refiner_depth) if refiner_depth
                                 else nn.Linear(context_dim, hidden_size))
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_double))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single))
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), in_channels, modulated=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) embedder MLPs, zero adaLN modulations (every block starts as
        the identity) and a zero final layer (the model predicts 0)."""
        init_linears_and_patches(self)
        refiner_t = getattr(self.context_embedder, "t_embedder", None)
        for embedder in (self.t_embedder, getattr(self, "guidance_embedder", None), refiner_t):
            if embedder is not None:
                nn.init.normal_(embedder.mlp[0].weight, std=0.02)
                nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        for block in self.double_blocks:
            for stream in (block.video, block.text):
                nn.init.zeros_(stream.adaLN_modulation[-1].weight)
                nn.init.zeros_(stream.adaLN_modulation[-1].bias)
        for block in self.single_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        zero_final_layer(self.final_layer)
        if self.image_condition_channels:  # a new image condition starts as "no change" (Open-Sora 2.0)
            nn.init.zeros_(self.cond_embedder.proj.weight)
            nn.init.zeros_(self.cond_embedder.proj.bias)

    # ----------------------------------------------------------------------------- conditioning
    def _conditioning(self, timestep: torch.Tensor, b: int, t: int, guidance, pooled_text):
        """(``vec`` ``[B, T or 1, D]`` for the video tokens, ``txt_vec`` ``[B, D]`` for the text,
        the text side's timestep ``[B]``)."""
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep
        if timestep.ndim == 2 and timestep.shape != (b, t):
            raise ValueError(f"per-frame timesteps must be [B, T] = [{b}, {t}] (latent frames after patching), "
                             f"got {list(timestep.shape)}")
        extra = self._guidance_and_pooled_text(b, timestep.device, guidance, pooled_text)  # [B, D]
        if timestep.ndim == 1:
            vec = self.t_embedder(timestep) + extra  # [B, D]
            return vec[:, None], vec, timestep
        text_time = timestep.amax(1)  # the noisy frames' time
        vec = self.t_embedder(timestep.reshape(-1)).view(b, t, -1) + extra[:, None]  # [B, T, D]
        return vec, self.t_embedder(text_time) + extra, text_time

    def _guidance_and_pooled_text(self, b: int, device: torch.device, guidance, pooled_text) -> torch.Tensor:
        """The guidance and pooled-text embeddings, summed ``[B, D]`` (zeros without either)."""
        dtype = self.t_embedder.mlp[0].weight.dtype
        extra = torch.zeros(b, self.hidden_size, device=device, dtype=dtype)
        if self.guidance_embed:
            guidance = self.default_guidance if guidance is None else guidance
            guidance = torch.as_tensor(guidance, device=device, dtype=torch.float32).reshape(-1).expand(b)
            extra = extra + self.guidance_embedder(guidance * self.guidance_scale_factor)
        if self.pooled_text_dim:
            if pooled_text is None:
                pooled_text = torch.zeros(b, self.pooled_text_dim, device=device, dtype=dtype)
            if pooled_text.shape != (b, self.pooled_text_dim):
                raise ValueError(f"pooled_text must be [B, pooled_text_dim] = [{b}, {self.pooled_text_dim}], "
                                 f"got {list(pooled_text.shape)}")
            extra = extra + self.pooled_text_embedder(pooled_text.to(dtype))
        return extra

    def _text(self, context, context_mask, b: int, text_time: torch.Tensor):
        """(text tokens ``[B, L, D]``, their key mask ``[B, L]`` or None: every token a key)."""
        if context is None:
            raise ValueError("MMDiT has no learned null caption: pass context (the empty caption's tokens)")
        if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be [B, L, context_dim] = [{b}, L, {self.context_dim}], "
                             f"got {list(context.shape)}")
        mask = None if context_mask is None or not self.text_mask else context_mask.bool()
        if isinstance(self.context_embedder, TokenRefiner):
            full = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
            return self.context_embedder(context, full if mask is None else mask, text_time), mask
        return self.context_embedder(context), mask

    def pack_image_condition(self, latents: torch.Tensor, given_mask: torch.Tensor) -> torch.Tensor:
        """Open-Sora 2.0's ``cond`` for latents ``[B, C, T, H, W]`` with given frames
        ``given_mask`` ``[B, T]`` (True: given): one mask channel (1 on given frames), then the
        latents at the given frames, zeros elsewhere (its ``prepare_inference_condition``)."""
        return given_frames_condition(latents, given_mask, 1, self.image_condition_channels)

    def _image_condition(self, image_condition, x: torch.Tensor) -> torch.Tensor | float:
        """The embedded image condition ``[B, N, D]`` added to the video tokens (0 without one)."""
        if not self.image_condition_channels:
            if image_condition is not None:
                raise ValueError("this MMDiT takes no image_condition (image_condition_channels=0)")
            return 0.0
        c = self.image_condition_channels
        if image_condition is None:  # text-to-video: no frame given
            image_condition = x.new_zeros(x.shape[0], c, *x.shape[2:])
        if image_condition.shape != (x.shape[0], c, *x.shape[2:]):
            raise ValueError(f"image_condition must be [B, {c}, T, H, W] = {[x.shape[0], c, *x.shape[2:]]}, "
                             f"got {list(image_condition.shape)}")
        return self.cond_embedder(pad_to_patches(image_condition, self.patch_size))[0]

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> Rope:
        """(cos, sin) ``[1, N, head_dim]`` of the video tokens of a ``(t, h, w)`` grid."""
        tables = rope_3d(tuple(grid), self.hidden_size // self.num_heads, self.rope_theta, self.rope_axes_dims)
        return tuple(c.to(device)[None] for c in tables)

    # ------------------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        *,
        pooled_text: Optional[torch.Tensor] = None,
        guidance: Optional[torch.Tensor] = None,
        image_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the target for latents ``x`` ``[B, C, T, H, W]`` at ``timestep`` ``[B]`` or
        ``[B, T]``, conditioned on text tokens ``context`` ``[B, L, context_dim]`` (boolean
        ``context_mask`` ``[B, L]``, True = real), ``pooled_text``, ``guidance`` and
        ``image_condition`` (see the module docstring). Latents are zero-padded to whole patches
        and the output cropped back."""
        check_latents(x, self.in_channels)
        b, _, *size = x.shape
        tokens, grid = self.x_embedder(pad_to_patches(x, self.patch_size))  # [B, N, D], N = t·h·w
        tokens = tokens + self._image_condition(image_condition, x)  # [B, N, D]
        vec, txt_vec, text_time = self._conditioning(timestep, b, grid[0], guidance, pooled_text)
        txt, mask = self._text(context, context_mask, b, text_time)  # [B, L, D]; [B, L] or None
        rope = self.rope(grid, x.device)  # 2 × [1, N, head_dim]

        text = [txt]  # the text stream after the blocks run so far: a split stack carries it on

        def stack(x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
            y = txt if start == 0 else text[0]  # the text stream ends with the blocks
            for block in (*self.double_blocks, *self.single_blocks)[start:stop]:
                x, y = block(x, y, vec, txt_vec, mask, rope)
            text[0] = y
            return x

        first = next(iter((*self.double_blocks, *self.single_blocks)), None)
        tokens = self.run_blocks(tokens, lambda: first.modulated_input(tokens, vec), stack)
        out = unpatchify(self.final_layer(tokens, vec), grid, self.patch_size, self.out_channels)
        return out[:, :, : size[0], : size[1], : size[2]]  # [B, C, T, H, W]

    def run_blocks(self, tokens: torch.Tensor, indicator, blocks) -> torch.Tensor:
        """The block-stack hook (backbone contract): ``blocks(tokens)`` (double then single
        stream; the video tokens' residual; ``blocks(tokens, start, stop)``: blocks ``start:stop``,
        the text stream carried on from the blocks before ``start`` of the same call);
        ``indicator()`` is the first block's normalised, modulated video input (TeaCache's)."""
        return blocks(tokens)

    # ------------------------------------------------------------------------------ FLOPs
    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract) at a per-sample timestep."""
        if text_len <= 0:
            raise ValueError("MMDiT is text-conditional: give text_len > 0")
        t, h, w = patch_grid(self.patch_size, latent_thw)
        d, b, n, L = self.hidden_size, batch_size, t * h * w, int(text_len)
        out: dict[str, int] = {name: 0 for name in BLOCK_PARTS if "cross" not in name}
        channels = self.in_channels + self.image_condition_channels  # the image condition has its own embedder
        out["patch_embed"] = b * mm(n, channels * math.prod(self.patch_size), d)
        embedders = [self.t_embedder.mlp[0], self.t_embedder.mlp[2]]
        if self.guidance_embed:
            embedders += [self.guidance_embedder.mlp[0], self.guidance_embedder.mlp[2]]
        if self.pooled_text_dim:
            embedders += [self.pooled_text_embedder.fc1, self.pooled_text_embedder.fc2]
        out["timestep_embed"] = b * sum(mm(1, lin.in_features, lin.out_features) for lin in embedders)
        if isinstance(self.context_embedder, TokenRefiner):
            out["text_refiner"] = self._refiner_flops(b, L)
        else:
            out["text_proj"] = b * mm(L, self.context_dim, d)
        for block in self.double_blocks:
            self._double_flops(out, block, b, n, L)
        for block in self.single_blocks:
            self._single_flops(out, block, b, n, L)
        out["final_layer"] = b * (mm(1, d, 2 * d) + mm(n, d, self.final_layer.linear.out_features))
        return out

    def _refiner_flops(self, b: int, L: int) -> int:
        refiner, d, c = self.context_embedder, self.hidden_size, self.context_dim
        part: dict[str, int] = {}
        linears = [refiner.t_embedder.mlp[0], refiner.t_embedder.mlp[2], refiner.c_embedder.fc1, refiner.c_embedder.fc2]
        total = b * (sum(mm(1, lin.in_features, lin.out_features) for lin in linears) + mm(L, c, d))
        for block in refiner.blocks:
            total += b * mm(1, d, 2 * d)
            attention_flops(part, b, 1, L, d)
            mlp_flops(part, b, L, d, block.mlp.fc1.out_features)
        return total + sum(part.values())

    def _double_flops(self, out: dict[str, int], block: DoubleStreamBlock, b: int, n: int, L: int) -> None:
        d = self.hidden_size
        out["adaln"] += 2 * b * mm(1, d, 6 * d)
        out["qkv_proj"] += b * (mm(n + L, d, 3 * d) + mm(n + L, d, d))
        out["self_attention"] += b * 4 * (n + L) ** 2 * d
        mlp_flops(out, b, n + L, d, block.video.mlp.fc1.out_features)

    def _single_flops(self, out: dict[str, int], block: SingleStreamBlock, b: int, n: int, L: int) -> None:
        d, m = self.hidden_size, block.mlp_hidden
        out["adaln"] += 2 * b * mm(1, d, 3 * d)
        out["qkv_proj"] += b * (mm(n + L, d, 3 * d) + mm(n + L, d, d))
        out["self_attention"] += b * 4 * (n + L) ** 2 * d
        out["mlp"] += b * (mm(n + L, d, m) + mm(n + L, m, d))
