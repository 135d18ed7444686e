"""Diffusion Transformer for video latents (pure torch: no Lightning, no torch.distributed).

One class covers the design space of the DiT paper and Open-Sora:

* **conditioning** — ``adaln``: adaLN-zero modulation from timestep + pooled text (the DiT
  paper's best variant); ``cross_attn``: adaLN-zero from the timestep and a cross-attention
  layer over the text tokens (PixArt-α / Open-Sora STDiT); ``in_context``: the timestep and
  text tokens are concatenated to the patch sequence and dropped after the last block.
* **layout** — ``full``: one attention over all spacetime patches; ``spatial_temporal``
  (STDiT): attention within each frame, then across frames at each position.

* **adaln_single** (PixArt-α / Open-Sora STDiT / Latte): instead of one modulation linear per
  block, ONE shared linear (``t_block``) maps the conditioning vector to all modulation
  vectors and each block adds its own learned ``scale_shift_table``; the final layer adds its
  table to the conditioning vector itself. At XL width this removes ~12M parameters per
  block (STDiT-XL/2: 1.09B → 0.76B).

Every block starts as the identity (adaLN gates and residual output projections are zero),
and the final projection is zero, so an untrained model predicts 0 (DiT's
``initialize_weights``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal, Optional, Sequence

import torch
from torch import nn

from lvdm.models.embeddings import LabelEmbedder, PatchEmbed3D, TimestepEmbedder, check_latents, sincos_pos_embed_3d
from lvdm.models.flops import DiTShape
from lvdm.models.layers import (Attention, FinalLayer, Mlp, gated, init_linears_and_patches, modulate,
                               pad_to_patches, unpatchify, zero_final_layer, zero_init_block)
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.models.stdit import STDiTBlock, sincos_2d

Conditioning = Literal["adaln", "cross_attn", "in_context"]
Layout = Literal["full", "spatial_temporal"]

#: Size presets of the DiT paper (Table 1): depth, hidden size, heads.
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def parse_size(name: str) -> tuple[int, int, int, int]:
    """``"XL/2"`` → ``(depth, hidden, heads, spatial patch)``."""
    base, _, patch = name.partition("/")
    if base not in SIZES or not patch.isdigit():
        raise ValueError(f"unknown DiT size {name!r}; use one of {[s + '/2' for s in SIZES]} (or /4, /8)")
    return (*SIZES[base], int(patch))


class DiTBlock(nn.Module):
    """One transformer block of the ``full`` layout: self-attention over every spacetime patch,
    an optional cross-attention to the text tokens, and an MLP, each a pre-norm residual branch.
    (The ``spatial_temporal`` layout's block is :class:`SpatialTemporalBlock`.)

    With ``adaln`` / ``cross_attn`` conditioning each self-attention and MLP branch is
    modulated by (shift, scale, gate) regressed from the conditioning vector ``c``; with
    ``in_context`` the norms are plain LayerNorms and ``num_prefix`` condition tokens lead the
    sequence.

    With ``adaln_single`` the block owns no modulation linear: ``c`` is then the output of the
    model's shared ``t_block`` (``[B, 6·D]``, one (shift, scale, gate) triple per branch) and
    the block adds its learned ``scale_shift_table`` ``[6, D]`` to it.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        conditioning: Conditioning = "adaln",
        qk_norm: bool = False,
        adaln_single: bool = False,
    ):
        super().__init__()
        if adaln_single and conditioning == "in_context":
            raise ValueError("adaln_single needs adaln or cross_attn conditioning (in_context has no modulation)")
        self.conditioning = conditioning
        self.modulated = conditioning != "in_context"
        self.adaln_single = adaln_single
        affine = not self.modulated
        self.attn_norms = nn.ModuleList([nn.LayerNorm(hidden_size, elementwise_affine=affine, eps=1e-6)])
        self.attns = nn.ModuleList([Attention(hidden_size, num_heads, qk_norm=qk_norm)])
        if conditioning == "cross_attn":
            self.cross_norm = nn.LayerNorm(hidden_size, eps=1e-6)
            self.cross_attn = Attention(hidden_size, num_heads, cross=True, qk_norm=qk_norm)
        self.mlp_norm = nn.LayerNorm(hidden_size, elementwise_affine=affine, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.num_modulations = 6 if self.modulated else 0
        if adaln_single:
            # PixArt's initialisation for the shift/scale rows; the gate rows are zeroed by zero_init
            self.scale_shift_table = nn.Parameter(torch.randn(self.num_modulations, hidden_size) / hidden_size**0.5)
        elif self.modulated:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.num_modulations * hidden_size))

    def zero_init(self) -> None:
        """Make the block the identity (:func:`~lvdm.models.layers.zero_init_block`)."""
        zero_init_block(self, [self.attns[0].proj, self.mlp.fc2])

    def modulations(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The six (shift, scale, gate) rows of the two branches from the conditioning vector."""
        if self.adaln_single:  # c: the shared t_block output, one row per (shift, scale, gate)
            rows = c.unflatten(-1, (self.num_modulations, -1))  # [B, (F,) n, D]
            return (self.scale_shift_table.to(rows.dtype) + rows).unbind(-2)
        return self.adaLN_modulation(c).chunk(self.num_modulations, dim=-1)

    def modulated_input(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """The self-attention branch's normalised, modulated input (step caching's indicator)."""
        h = self.attn_norms[0](x)
        if not self.modulated:
            return h
        shift, scale = self.modulations(c)[:2]
        return modulate(h, shift, scale)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        grid: tuple[int, int, int],
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        num_prefix: int = 0,
        prefix_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, P + N, D]`` (P condition tokens, then the t-major patch tokens); keys are
        the whole sequence, ``sharded`` under sequence parallelism (``grid``: the local one)."""
        attn = partial(self.attns[0], key_mask=prefix_mask, sharded=True)
        if not self.modulated:
            x = x + attn(self.attn_norms[0](x))
            return x + self.mlp(self.mlp_norm(x))
        mods = self.modulations(c)
        x = x + gated(attn(modulate(self.attn_norms[0](x), mods[0], mods[1])), mods[2])
        if self.conditioning == "cross_attn":
            x = x + self.cross_attn(self.cross_norm(x), context=context, key_mask=context_mask)
        return x + gated(self.mlp(modulate(self.mlp_norm(x), mods[3], mods[4])), mods[5])


class SpatialTemporalBlock(STDiTBlock):
    """The ``spatial_temporal`` layout's block: the one spatial-temporal block,
    :class:`~lvdm.models.stdit.STDiTBlock`, as lvdm's DiT configures it — the temporal attention
    a branch of its own (``temporal_norm``), a LayerNorm in front of the cross-attention and
    QK-norm there too, modulation by ``conditioning`` (per-block adaLN-zero, adaLN-single, or
    none with in-context condition tokens) — under the parameter names of DiT checkpoints:
    ``attn_norms.0`` / ``attns.0`` (spatial), ``attn_norms.1`` / ``attns.1`` (temporal),
    ``mlp_norm``. Tokens are ``[B, T, S, D]`` (see :class:`~lvdm.models.stdit.PixArtBlock`)."""

    #: STDiTBlock's layer name → (DiT's name, index in its ModuleList or None)
    _DIT_NAMES = {"norm1": ("attn_norms", 0), "attn": ("attns", 0), "norm_temp": ("attn_norms", 1),
                  "attn_temp": ("attns", 1), "norm2": ("mlp_norm", None)}

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0,
                 conditioning: Conditioning = "adaln", qk_norm: bool = False, adaln_single: bool = False):
        if adaln_single and conditioning == "in_context":
            raise ValueError("adaln_single needs adaln or cross_attn conditioning (in_context has no modulation)")
        modulation = "none" if conditioning == "in_context" else "table" if adaln_single else "adaln"
        cross = conditioning == "cross_attn"
        super().__init__(hidden_size, num_heads, mlp_ratio, qk_norm, temporal_norm=True, modulation=modulation,
                         cross_attention=cross, cross_norm=cross, cross_qk_norm=qk_norm)

    def add_layers(self, **layers: nn.Module) -> None:
        for name, layer in layers.items():
            home, index = self._DIT_NAMES[name]
            if index is None:
                setattr(self, home, layer)
                continue
            if home not in self._modules:
                setattr(self, home, nn.ModuleList())
            getattr(self, home).append(layer)

    norm1 = property(lambda self: self.attn_norms[0])
    attn = property(lambda self: self.attns[0])
    norm_temp = property(lambda self: self.attn_norms[1])
    attn_temp = property(lambda self: self.attns[1])
    norm2 = property(lambda self: self.mlp_norm)


#: Where sequence parallelism splits ``DiT(layout="spatial_temporal")`` (as STDiT's plan): its
#: tokens ``[B, T, S, D]`` entering the first block are cut along the frames into equal chunks;
#: per-frame modulations (``mods``, and ``c`` of the final layer, ``[B, T, ...]``) are cut alike
#: (per sample, ``[B, 1, ...]``, they stay whole); attention within a frame and text
#: cross-attention stay local, attention across frames is ``sharded``. ``in_context`` is refused.
SPATIAL_TEMPORAL_PLAN = SequenceSplit(
    blocks="blocks", tokens="x", grid=None, gather="final_layer", follow_split=("mods", "c"),
    unsupported=(("conditioning", "in_context",
                  "its condition tokens would need replicating on every rank; use adaln or cross_attn"),),
)


def _resolve_size(size, patch_size, hidden_size, depth, num_heads) -> tuple:
    """(patch ``(pt, ph, pw)``, hidden size, depth, heads): the given values, the rest from the
    ``size`` preset; an int patch ``p`` is ``(1, p, p)`` (default 2)."""
    if size is not None:
        p_depth, p_hidden, p_heads, p_patch = parse_size(size)
        depth = depth or p_depth
        hidden_size = hidden_size or p_hidden
        num_heads = num_heads or p_heads
        patch_size = patch_size or p_patch
    if hidden_size is None or depth is None or num_heads is None:
        raise ValueError("give DiT a `size` preset or all of hidden_size, depth and num_heads")
    patch_size = patch_size or 2
    if isinstance(patch_size, int):
        patch_size = (1, patch_size, patch_size)
    return patch_size, hidden_size, depth, num_heads


def _check_options(patch_size, hidden_size, num_heads, conditioning, layout, context_dim, num_classes,
                   adaln_single, position) -> None:
    if len(patch_size) != 3 or any(int(p) < 1 for p in patch_size):
        raise ValueError(f"DiT.patch_size must be 3 positive sizes (pt, ph, pw), got {list(patch_size)}")
    if context_dim < 0 or num_classes < 0:
        raise ValueError(f"DiT.context_dim and DiT.num_classes must be >= 0, got {context_dim}, {num_classes}")
    if hidden_size % num_heads:
        raise ValueError(f"DiT.num_heads ({num_heads}) must divide DiT.hidden_size ({hidden_size})")
    if conditioning not in ("adaln", "cross_attn", "in_context"):
        raise ValueError(f"conditioning must be adaln, cross_attn or in_context, got {conditioning!r}")
    if position not in ("sincos_3d", "sincos_2d"):
        raise ValueError(f"DiT.position must be sincos_3d or sincos_2d, got {position!r}")
    if layout not in ("full", "spatial_temporal"):
        raise ValueError(f"layout must be full or spatial_temporal, got {layout!r}")
    if num_classes and context_dim:
        raise ValueError("a DiT is conditioned on class labels or on text (context_dim), not both")
    if adaln_single and conditioning == "in_context":
        raise ValueError(
            "adaln_single=True needs conditioning='adaln' or 'cross_attn': in_context conditioning "
            "has no adaLN modulation to share"
        )


def _check_positive(**values) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"DiT.{key} must be > 0, got {value}")


class DiT(nn.Module):
    """Diffusion Transformer over spacetime patches of a latent video ``[B, C, T, H, W]``.

    Args:
        in_channels: latent channels.
        out_channels: output channels (default ``in_channels``; ``2 * in_channels`` for a
            learned-variance DiT as in the paper).
        size: a DiT paper preset, ``"S/2"``, ``"B/4"``, ``"XL/2"``…: fills ``depth``,
            ``hidden_size``, ``num_heads`` and the spatial patch where those are not given.
        patch_size: ``(pt, ph, pw)`` spacetime patch; an int means ``(1, p, p)``.
        hidden_size, depth, num_heads, mlp_ratio: transformer dimensions.
        conditioning: ``adaln``, ``cross_attn`` or ``in_context`` (see module docstring).
        layout: ``full`` 3D attention or ``spatial_temporal`` (STDiT).
        context_dim: width of the text encoder's token embeddings (0 for class-conditional
            or unconditional models).
        num_classes: number of class labels for a class-conditional model (0: none).
        qk_norm: RMS-normalise queries and keys per head (stabilises large models).
        base_grid: reference patch grid ``(t, h, w)`` for position interpolation; grids of
            other sizes are stretched to the same position range (None: positions 0..n-1).
        adaln_single: adaLN-single (PixArt-α, Open-Sora STDiT, Latte) instead of per-block
            adaLN-zero: one shared ``t_block`` (SiLU + Linear ``D → 3·(n_attn+1)·D``) regresses
            every block's modulation from the conditioning vector, each block adds its own
            ``scale_shift_table``, and the final layer adds its ``[2, D]`` table to the
            conditioning vector. Far fewer parameters (STDiT-XL/2: 0.76B instead of 1.09B);
            ``adaln`` and ``cross_attn`` conditioning only. Blocks still start as the identity
            (zero ``t_block`` output layer and zero gate rows).
        position: ``sincos_3d`` (a quarter of the channels to time) or ``sincos_2d``: the DiT
            paper's 2D code (positions ``0..n-1``), the same on every frame (ImageNet DiT weights).
        timestep_freq_shift: diffusers' ``downscale_freq_shift`` of the timestep code (1 in
            diffusers' ``DiTTransformer2DModel``, 0 in the DiT paper's code).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: Optional[int] = None,
        size: Optional[str] = None,
        patch_size: int | Sequence[int] | None = None,
        hidden_size: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        conditioning: Conditioning = "adaln",
        layout: Layout = "full",
        context_dim: int = 0,
        num_classes: int = 0,
        qk_norm: bool = False,
        base_grid: Optional[Sequence[int]] = None,
        adaln_single: bool = False,
        position: Literal["sincos_3d", "sincos_2d"] = "sincos_3d",
        timestep_freq_shift: float = 0.0,
    ):
        super().__init__()
        patch_size, hidden_size, depth, num_heads = _resolve_size(size, patch_size, hidden_size, depth, num_heads)
        _check_positive(in_channels=in_channels, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                        mlp_ratio=mlp_ratio, out_channels=1 if out_channels is None else out_channels)
        _check_options(patch_size, hidden_size, num_heads, conditioning, layout, context_dim, num_classes,
                       adaln_single, position)
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.conditioning = conditioning
        self.layout = layout
        self.context_dim = context_dim
        self.num_classes = num_classes
        self.base_grid = tuple(base_grid) if base_grid else None
        self.adaln_single = bool(adaln_single)
        self.position = position
        self.timestep_freq_shift = float(timestep_freq_shift)
        self._build_layers(depth, mlp_ratio, qk_norm, timestep_freq_shift)
        self.initialize_weights()

    def _build_layers(self, depth: int, mlp_ratio: float, qk_norm: bool, timestep_freq_shift: float) -> None:
        """The embedders, the shared ``t_block`` (adaLN-single), the blocks and the final layer
        (in the order of the state dict's keys)."""
        d = self.hidden_size
        self.x_embedder = PatchEmbed3D(self.in_channels, d, self.patch_size)
        self.t_embedder = TimestepEmbedder(d, freq_shift=timestep_freq_shift)
        if self.adaln_single:
            # the one modulation linear shared by all blocks (PixArt / STDiT ``t_block``)
            n_mod = 6 if self.layout == "full" else 9  # (shift, scale, gate) of each attention and the MLP
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, n_mod * d))
        if self.num_classes:
            self.y_embedder = LabelEmbedder(self.num_classes, d)
        elif self.context_dim:
            # caption projection (PixArt): text tokens → hidden width
            self.context_proj = Mlp(self.context_dim, d, d)
        if self.layout == "spatial_temporal":  # per instance: the class attributes describe the full layout
            self.block_class, self.sequence_parallel_plan = SpatialTemporalBlock, SPATIAL_TEMPORAL_PLAN
        self.blocks = nn.ModuleList(
            self.block_class(d, self.num_heads, mlp_ratio, self.conditioning, qk_norm, self.adaln_single)
            for _ in range(depth)
        )
        modulated = self.conditioning != "in_context"
        self.final_layer = FinalLayer(d, math.prod(self.patch_size), self.out_channels, modulated, self.adaln_single)

    #: The unit that distributed code wraps, shards and checkpoints (see ``lvdm.distributed``):
    #: :class:`SpatialTemporalBlock` in the ``spatial_temporal`` layout.
    block_class = DiTBlock

    #: Where sequence parallelism splits this model (``lvdm.distributed`` applies it with hooks;
    #: ``forward`` is single-device code): the patch tokens ``[B, t*h*w, D]`` (t-major, positions
    #: added) entering the first block are cut along dim 1 into equal contiguous chunks of whole
    #: latent frames, the blocks see the local grid ``(t // P, h, w)``, and the final layer's
    #: output (per token) is gathered again. Full 3D attention is ``sharded`` (its keys live on
    #: all ranks); text cross-attention stays local. Per-token block inputs named in
    #: ``follow_split`` are cut like the tokens: the per-frame conditioning ``c`` ``[B, t, ...]``
    #: of masked-frame conditioning (per-sample ``c`` ``[B, D]`` is not cut). ``in_context`` is
    #: refused. The ``spatial_temporal`` layout declares :data:`SPATIAL_TEMPORAL_PLAN`.
    sequence_parallel_plan = SequenceSplit(
        blocks="blocks", tokens="x", grid="grid", gather="final_layer", follow_split=(("c", 3),),
        unsupported=(("conditioning", "in_context",
                      "its condition tokens would need replicating on every rank; use adaln or cross_attn"),),
    )

    #: Keyword conditions ``forward`` takes besides text (the backbone contract).
    micro_conditions = ("class_labels",)

    #: Settings of the non-learned codes (position code kind and grid, timestep frequencies):
    #: ``init_from`` refuses weights trained under other values (the backbone contract).
    fixed_position_settings = ("position", "base_grid", "timestep_freq_shift")

    #: Linears LoRA may adapt: attention (self and cross) and MLP projections of the blocks.
    lora_targets = r"blocks\.\d+\..*\b(qkv|q|kv|proj|fc1|fc2)"

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract): forward FLOPs by component (:mod:`lvdm.models.flops`)."""
        return DiTShape.from_model(self).forward_flops(latent_thw, text_len, batch_size)

    def initialize_weights(self) -> None:
        """DiT initialisation: Xavier linears, N(0, 0.02) embeddings, identity blocks, zero output."""

        init_linears_and_patches(self)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.num_classes:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.adaln_single:
            # shift/scale rows as PixArt (N(0, 1/D)); zero t_block output + zero gate rows make
            # every block the identity whatever the conditioning vector
            nn.init.zeros_(self.t_block[-1].weight)
            nn.init.zeros_(self.t_block[-1].bias)
            for block in self.blocks:
                nn.init.normal_(block.scale_shift_table, std=self.hidden_size**-0.5)
            nn.init.normal_(self.final_layer.scale_shift_table, std=self.hidden_size**-0.5)
        for block in self.blocks:
            block.zero_init()
        zero_final_layer(self.final_layer)

    def _embed_timestep(self, timestep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` → ``[B, D]``; per-frame ``[B, T]`` → ``[B, T / pt, D]``, one vector per patch
        frame. A temporal patch spanning several latent frames takes the time of its noisiest
        frame (its given frames are still seen clean in its input)."""
        b, t = x.shape[0], x.shape[2]
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        if timestep.ndim == 1:
            return self.t_embedder(timestep)
        if timestep.ndim != 2 or tuple(timestep.shape) != (b, t):
            raise ValueError(f"timestep must be [batch] or per frame [batch, latent frames] = [{b}, {t}], "
                             f"got {tuple(timestep.shape)}")
        if self.conditioning == "in_context":
            raise ValueError("per-frame timesteps need adaln or cross_attn conditioning "
                             "(in_context has one timestep token, no per-token modulation)")
        per_patch = timestep.unflatten(1, (-1, self.patch_size[0])).amax(dim=2)
        return self.t_embedder(per_patch.flatten()).unflatten(0, per_patch.shape)

    def _condition(self, timestep, x, context, context_mask, class_labels):
        """Returns (c vector ``[B, D]`` or per patch frame ``[B, F, D]`` or None, context tokens
        or None, their mask or None)."""
        c = self._embed_timestep(timestep, x)
        tokens, mask = None, None
        if self.num_classes:
            if class_labels is None:
                raise ValueError("this DiT is class-conditional: pass class_labels")
            tokens = self.y_embedder(class_labels)[:, None]
        elif self.context_dim:
            if context is None:
                raise ValueError("this DiT is text-conditional: pass context (text token embeddings)")
            tokens = self.context_proj(context)
            mask = context_mask.bool() if context_mask is not None else None
        if self.conditioning == "adaln" and tokens is not None:
            if mask is None:
                pooled = tokens.mean(1)
            else:
                w = mask.to(tokens.dtype)[..., None]
                pooled = (tokens * w).sum(1) / w.sum(1).clamp(min=1)
            c = c + (pooled[:, None] if c.ndim == 3 else pooled)
        return c, tokens, mask

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the denoising target for latents ``x`` ``[B, C, T, H, W]`` at ``timestep``
        ``[B]`` (or one per latent frame, ``[B, T]``: masked-frame conditioning, whose
        modulation applies to each frame's tokens), conditioned on text tokens ``context``
        ``[B, L, context_dim]`` (with boolean ``context_mask`` ``[B, L]``) or on
        ``class_labels`` ``[B]``. A frame count that is not a multiple of the temporal patch (an
        image: ``T = 1``) is padded by repeating the last frame, a height or width that is not a
        multiple of the spatial patch is zero-padded at the end (as Open-Sora 1.2), and the
        prediction is cropped back to ``T × H × W``."""
        check_latents(x, self.in_channels)
        b, _, t, h, w = x.shape
        if t % self.patch_size[0]:  # images and odd lengths: repeat the last frame to whole temporal patches
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, -t % self.patch_size[0], -1, -1)], dim=2)
        x = pad_to_patches(x, self.patch_size, time=False)
        tokens, grid = self.x_embedder(x)
        if self.position == "sincos_2d":
            pos = sincos_2d(self.hidden_size, grid[1], grid[2], None, 1.0).repeat(grid[0], 1).to(tokens)
        else:
            pos = sincos_pos_embed_3d(self.hidden_size, grid, self.base_grid, device=tokens.device).to(tokens.dtype)
        tokens = tokens + pos[None]
        c, ctx, ctx_mask = self._condition(timestep, x, context, context_mask, class_labels)
        prefix = self._prefix(c, ctx, ctx_mask) if self.conditioning == "in_context" else None
        run = self._run_full if self.layout == "full" else self._run_spatial_temporal
        return self.unpatchify(run(tokens, grid, c, ctx, ctx_mask, prefix), grid)[:, :, :t, :h, :w]

    @staticmethod
    def _prefix(c, ctx, ctx_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """In-context condition tokens ``[B, P, D]`` (timestep, then text or label) and their
        key mask ``[B, P]``."""
        prefix = torch.cat([c[:, None]] + ([ctx] if ctx is not None else []), dim=1)
        mask = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
        if ctx_mask is not None:
            mask[:, 1:] = ctx_mask
        return prefix, mask

    def _run_full(self, tokens, grid, c, ctx, ctx_mask, prefix) -> torch.Tensor:
        """The blocks and final layer of the ``full`` layout on tokens ``[B, N, D]``."""
        num_prefix, mask = 0, None
        if prefix is not None:  # condition tokens lead the sequence: keys for every token
            prefix, prefix_mask = prefix
            num_prefix = prefix.shape[1]
            mask = torch.cat([prefix_mask, prefix_mask.new_ones(tokens.shape[:2])], dim=1)
            tokens, c = torch.cat([prefix, tokens], dim=1), None
        block_c = self.t_block(c) if self.adaln_single else c  # per sample, or per frame (cut with the frames under SP)

        def stack(x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
            for block in self.blocks[start:stop]:
                x = block(x, block_c, grid, ctx, ctx_mask, num_prefix, mask)
            return x

        tokens = self.run_blocks(tokens, lambda: self.blocks[0].modulated_input(tokens, block_c), stack)
        return self.final_layer(tokens[:, num_prefix:], c)

    def _run_spatial_temporal(self, tokens, grid, c, ctx, ctx_mask, prefix) -> torch.Tensor:
        """The blocks (:class:`SpatialTemporalBlock`) on tokens ``[B, T, S, D]`` and the final layer."""
        b, t = tokens.shape[0], grid[0]
        x = tokens.view(b, t, grid[1] * grid[2], self.hidden_size)
        c = c[:, None] if c is not None and c.ndim == 2 else c  # [B, T or 1, D]
        num_prefix, prefix_mask = 0, None
        if prefix is not None:  # the condition tokens lead every frame
            prefix, prefix_mask = prefix
            num_prefix = prefix.shape[1]
            x, c = torch.cat([prefix[:, None].expand(-1, t, -1, -1), x], dim=2), None
        mods = self.t_block(c).unflatten(-1, (-1, self.hidden_size)) if self.adaln_single else c

        def stack(x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
            for block in self.blocks[start:stop]:
                x = block(x, mods, ctx, ctx_mask, prefix_mask=prefix_mask)
            return x

        x = self.run_blocks(x, lambda: self.blocks[0].modulated_input(x, mods), stack)
        return self.final_layer(x[:, :, num_prefix:].flatten(1, 2), c)

    def run_blocks(self, tokens: torch.Tensor, indicator, blocks) -> torch.Tensor:
        """The block-stack hook (backbone contract): ``blocks(tokens)`` (``blocks(tokens, start, stop)``:
        blocks ``start:stop``); ``indicator()`` is the first block's normalised, modulated input
        (TeaCache's indicator)."""
        return blocks(tokens)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return unpatchify(tokens, grid, self.patch_size, self.out_channels)
