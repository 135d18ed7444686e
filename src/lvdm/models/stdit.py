"""The PixArt-α family of diffusion transformers, with the exact layout of the public weights
(pure torch: no Lightning, no torch.distributed).

One class, :class:`STDiT`, with a few named options, covers four published models:

============================  ===============  ==========================================
model                         ``temporal``     temporal position
============================  ===============  ==========================================
PixArt-α (image)              ``"none"``       —
Open-Sora 1.0 STDiT           ``"inline"``     ``"sincos_branch"`` (block 0's temporal input)
Latte                         ``"blocks"``     ``"sincos_stream"`` (added after spatial block 0)
Open-Sora 1.2 STDiT3          ``"blocks"``     ``"rope"`` (on the temporal queries and keys)
============================  ===============  ==========================================

What they share, and where they differ from :class:`lvdm.models.dit.DiT`:

* **adaLN-single**: one ``t_block`` maps the conditioning vector to six modulations (shift,
  scale, gate of the attention and of the MLP) that every block adds to its own
  ``scale_shift_table``; the final layer adds its ``[2, D]`` table to the vector itself.
* **cross-attention without a norm** in front (lvdm's DiT has a LayerNorm there).
* **2D sin-cos position per frame**, channels ``[w | h]``, positions stretched to a base grid
  (``base_size``) and divided by ``interpolation_scale`` (PixArt), instead of a 3D
  ``[t | h | w]`` code.
* **temporal layers**: ``"inline"`` (:class:`STDiTBlock`): attention across frames inside
  each block, on the un-normalised tokens, scaled by the spatial gate; ``"blocks"``: a separate
  :class:`PixArtBlock` across frames after each spatial one, with its own modulation table and
  MLP (and, for STDiT3, its own cross-attention).
* **micro-conditions**: PixArt-α 1024's resolution and aspect ratio, Open-Sora 1.2's fps, each
  a sinusoidal code + MLP added to the timestep embedding.
* ``pred_sigma``: the published models predict a variance too (``2·C`` output channels); the
  variance half is kept so the weights load, and :meth:`STDiT.forward` returns the first ``C``
  channels, the only ones lvdm's objectives use.

:class:`STDiTBlock` is lvdm's one spatial-temporal block: ``DiT(layout="spatial_temporal")``
runs it too (:class:`lvdm.models.dit.SpatialTemporalBlock`, with ``temporal_norm``).

Initialisation makes every block the identity by zeroing the output projections of its
residual branches (attention, cross-attention, MLP), so temporal layers added to a trained
image model leave it unchanged (the phase 1 → 2 hand-off, :mod:`lvdm.checkpoints.init_from`).
Timesteps may be ``[B]`` or per latent frame ``[B, T]``: modulations are computed per frame
and broadcast over the frame's tokens.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import Callable, Literal, NamedTuple, Optional, Sequence

import torch
from torch import nn

from lvdm.models.embeddings import PatchEmbed3D, TimestepEmbedder, check_latents, sincos_1d
from lvdm.models.flops import attention_flops, cross_attention_flops, mlp_flops, mm, patch_grid
from lvdm.models.layers import (Attention, FinalLayer, Mlp, init_linears_and_patches, modulate, pad_to_patches,
                               unpatchify, zero_final_layer, zero_init_block)
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.models.rope import apply_rope, rope_1d, rope_3d

Temporal = Literal["none", "inline", "blocks"]
TemporalPosition = Literal["none", "sincos_stream", "sincos_branch", "rope"]
Position = Literal["sincos_2d", "rope_3d"]
Modulation = Literal["table", "adaln", "none"]
Rope = Callable[[torch.Tensor], torch.Tensor]


@lru_cache(maxsize=64)
def sincos_2d(hidden_size: int, h: int, w: int, base_size: Optional[int], interpolation_scale: float) -> torch.Tensor:
    """PixArt's 2D sin-cos code ``[h·w, hidden]`` (float32): the first half of the channels
    encodes the column (w), the second the row (h). Positions along an axis of n patches are
    ``i · base_size / n / interpolation_scale`` (``i / interpolation_scale`` without a base),
    computed in float32 as diffusers does."""
    if hidden_size % 4:
        raise ValueError(f"a 2D sin-cos position code needs hidden_size divisible by 4, got {hidden_size}")
    with torch.device("cpu"):  # cached: never build it on a default meta / CUDA device
        return _sincos_2d(hidden_size, h, w, base_size, interpolation_scale)


def _sincos_2d(hidden_size, h, w, base_size, interpolation_scale) -> torch.Tensor:
    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float32)
        if base_size:
            pos = pos / (n / base_size)
        return pos / interpolation_scale

    rows, cols = torch.meshgrid(axis(h), axis(w), indexing="ij")
    emb_w = sincos_1d(hidden_size // 2, cols.reshape(-1))
    emb_h = sincos_1d(hidden_size // 2, rows.reshape(-1))
    return torch.cat([emb_w, emb_h], dim=1).float()


@lru_cache(maxsize=64)
def sincos_frames(hidden_size: int, length: int, time_scale: float = 1.0) -> torch.Tensor:
    """1D sin-cos code ``[length, hidden]`` (float32) of frame positions ``i / time_scale``,
    ``i = 0 … length-1`` (Open-Sora 1.0's ``get_1d_sincos_pos_embed``, float64 positions)."""
    with torch.device("cpu"):
        return sincos_1d(hidden_size, torch.arange(length, dtype=torch.float64) / time_scale).float()


class Positions(NamedTuple):
    """The position codes one forward pass hands to its blocks: tensors whose dim 1 runs over
    the latent frames, so sequence parallelism cuts them with the tokens (``follow_split``)."""

    rope_3d: Optional[tuple[torch.Tensor, torch.Tensor]] = None  #: (cos, sin) ``[1, T, 1, S, hd]``, every attention
    temporal_rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None  #: (cos, sin) ``[1, T, hd]``, across frames
    temporal_sincos: Optional[torch.Tensor] = None  #: ``[1, T, D]`` added to block 0's temporal-attention input
    stream_sincos: Optional[torch.Tensor] = None  #: ``[1, T, D]`` added to the tokens before temporal block 0

    def rope(self, temporal: bool, b: int) -> Optional[Rope]:
        """The rotary code for queries ``[B·S, heads, T, hd]`` (``temporal``) or ``[B·T, heads, S, hd]``."""
        if self.rope_3d is not None:
            cos, sin = (c[0].transpose(0, 2) if temporal else c[0] for c in self.rope_3d)
            return lambda q: apply_rope(q.unflatten(0, (b, -1)), cos, sin).flatten(0, 1)
        if temporal and self.temporal_rope is not None:
            cos, sin = (c[0] for c in self.temporal_rope)
            return lambda q: apply_rope(q, cos, sin)
        return None


def attend(attn: Attention, x: torch.Tensor, temporal: bool, rope: Optional[Rope] = None,
           prefix_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Self-attention of ``x`` ``[B, T, S, D]`` within each frame (over S) or, ``temporal``,
    across frames at each position (over T). Under sequence parallelism the frames are split
    across ranks, so attention across them is ``sharded`` (its keys live on every rank).

    ``prefix_mask`` ``[B, P]``: the first P of every frame's S tokens are the same condition
    tokens (lvdm DiT's in-context conditioning, valid where True): within a frame they are
    keys like the frame's tokens and each takes the mean of its per-frame updates (so the copies
    stay equal); across frames they are left out (zero update)."""
    b, t, s, d = x.shape
    if prefix_mask is not None:
        p = prefix_mask.shape[1]
        if temporal:
            return torch.cat([torch.zeros_like(x[:, :, :p]), attend(attn, x[:, :, p:], True, rope)], dim=2)
        keys = torch.cat([prefix_mask, prefix_mask.new_ones(b, s - p)], dim=1).repeat_interleave(t, dim=0)
        out = attn(x.reshape(b * t, s, d), key_mask=keys, rope=rope).reshape(b, t, s, d)
        return torch.cat([out[:, :, :p].mean(1, keepdim=True).expand(-1, t, -1, -1), out[:, :, p:]], dim=2)
    if temporal:
        out = attn(x.transpose(1, 2).reshape(b * s, t, d), rope=rope, sharded=True)
        return out.reshape(b, s, t, d).transpose(1, 2)
    return attn(x.reshape(b * t, s, d), rope=rope).reshape(b, t, s, d)


def _branch(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, rows) -> torch.Tensor:
    """A residual branch on normalised tokens ``h``: modulated and gated by its (shift, scale,
    gate) ``rows``, or plain (None: no modulation)."""
    if rows is None:
        return fn(h)
    shift, scale, gate = rows
    return gate * fn(modulate(h, shift, scale))


class PixArtBlock(nn.Module):
    """PixArt-α's block (diffusers ``BasicTransformerBlock`` with ``ada_norm_single``; also
    Latte's and STDiT3's spatial and temporal blocks): modulated self-attention within a
    frame (or across frames, ``temporal``), cross-attention to the text tokens with no norm
    in front, modulated MLP.

    Args:
        hidden_size, num_heads, mlp_ratio: dimensions.
        temporal: attend across frames instead of within a frame.
        cross_attention: include the text cross-attention (Latte's temporal blocks have none).
        qk_norm: RMS-normalise self-attention queries and keys (STDiT3; never cross-attention).
        modulation: where each branch's (shift, scale, gate) come from: ``"table"``
            (adaLN-single: the model's shared ``t_block`` output plus this block's
            ``scale_shift_table``), ``"adaln"`` (adaLN-zero: this block's ``adaLN_modulation``
            linear of the conditioning vector) or ``"none"`` (affine LayerNorms, no gates).
        cross_norm: a LayerNorm in front of the cross-attention (lvdm's DiT).
        cross_qk_norm: RMS-normalise the cross-attention's queries and keys (lvdm's DiT).
    """

    #: self-attention branches with their own (shift, scale, gate) rows (the MLP has one more)
    attention_branches = 1

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, temporal: bool = False,
                 cross_attention: bool = True, qk_norm: bool = False, modulation: Modulation = "table",
                 cross_norm: bool = False, cross_qk_norm: bool = False):
        super().__init__()
        if modulation not in ("table", "adaln", "none"):
            raise ValueError(f"modulation must be table, adaln or none, got {modulation!r}")
        self.temporal, self.modulation = temporal, modulation
        self.add_layers(norm1=self.norm(hidden_size), attn=Attention(hidden_size, num_heads, qk_norm=qk_norm))
        if cross_attention and cross_norm:
            self.cross_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = None
        if cross_attention:
            self.cross_attn = Attention(hidden_size, num_heads, cross=True, qk_norm=cross_qk_norm)
        self.add_layers(norm2=self.norm(hidden_size))
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.num_modulations = 3 * (self.attention_branches + 1)
        if modulation == "table":
            self.scale_shift_table = nn.Parameter(torch.randn(self.num_modulations, hidden_size) / hidden_size**0.5)
        elif modulation == "adaln":
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.num_modulations * hidden_size))

    def norm(self, hidden_size: int) -> nn.LayerNorm:
        """A branch's pre-norm: affine only when no modulation scales and shifts it."""
        return nn.LayerNorm(hidden_size, elementwise_affine=self.modulation == "none", eps=1e-6)

    def add_layers(self, **layers: nn.Module) -> None:
        """Register sub-layers under their names (a subclass may keep other checkpoint names)."""
        for name, layer in layers.items():
            setattr(self, name, layer)

    def output_projections(self) -> list[nn.Linear]:
        """The last linear of every residual branch: all zero makes the block the identity."""
        projs = [self.attn.proj, self.mlp.fc2]
        return projs + ([self.cross_attn.proj] if self.cross_attn is not None else [])

    def zero_init(self) -> None:
        """DiT's way to make the block the identity (:func:`~lvdm.models.layers.zero_init_block`):
        zero gates, or zero residual outputs without modulation; zero cross-attention output."""
        zero_init_block(self, self.output_projections())

    def modulations(self, mods: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, ...]]:
        """The (shift, scale, gate) rows of every branch, each ``[B, T or 1, 1, D]``, from the
        shared ``t_block`` output ``[B, T or 1, n, D]`` (``"table"``) or the conditioning vector
        ``[B, T or 1, D]`` (``"adaln"``); None without modulation."""
        if self.modulation == "none":
            return None
        if self.modulation == "adaln":
            mods = self.adaLN_modulation(mods).unflatten(-1, (self.num_modulations, -1))
        else:
            mods = mods + self.scale_shift_table.to(mods.dtype)
        return mods.unsqueeze(3).unbind(2)

    def modulated_input(self, x: torch.Tensor, mods: Optional[torch.Tensor]) -> torch.Tensor:
        """The self-attention branch's normalised, modulated input (step caching's indicator)."""
        rows, h = self.modulations(mods), self.norm1(x)
        return h if rows is None else modulate(h, rows[0], rows[1])

    def forward(self, x: torch.Tensor, mods: Optional[torch.Tensor], context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None, positions: Positions = Positions(),
                prefix_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``[B, T, S, D]``; ``mods``: see :meth:`modulations` (per frame or per sample);
        ``context`` ``[B, L, D]`` projected text tokens; ``prefix_mask``: see :func:`attend`."""
        rows = self.modulations(mods)
        if self.temporal and positions.stream_sincos is not None:  # Latte: frame code into the stream
            x = x + positions.stream_sincos[:, :, None].to(x.dtype)
        x = self.self_attention(x, rows, positions, prefix_mask)
        if self.cross_attn is not None:  # per token: run on the whole sequence, not per frame
            b, t, s, d = x.shape
            h = self.cross_norm(x) if hasattr(self, "cross_norm") else x
            x = x + self.cross_attn(h.reshape(b, t * s, d), context=context, key_mask=context_mask).view(b, t, s, d)
        return x + _branch(self.mlp, self.norm2(x), rows and rows[-3:])

    def self_attention(self, x, rows, positions: Positions, prefix_mask=None) -> torch.Tensor:
        rope = positions.rope(self.temporal, x.shape[0])
        attn = partial(attend, self.attn, temporal=self.temporal, rope=rope, prefix_mask=prefix_mask)
        return x + _branch(attn, self.norm1(x), rows and rows[:3])


class STDiTBlock(PixArtBlock):
    """The spatial-temporal block: a spatial :class:`PixArtBlock` whose attention branch is
    followed by attention across frames (``attn_temp``). Open-Sora 1.0 runs it on the
    un-normalised, unmodulated tokens, scaled by the spatial gate, and block 0 adds the
    temporal sin-cos code to that branch's input; with ``temporal_norm`` (lvdm's
    ``DiT(layout="spatial_temporal")``) it is a branch of its own: LayerNorm ``norm_temp``
    and its own (shift, scale, gate) rows."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 temporal_norm: bool = False, **options):
        if not temporal_norm and options.get("modulation") == "none":
            raise ValueError("an STDiTBlock without temporal_norm gates its temporal attention: it needs modulation")
        self.temporal_norm = temporal_norm
        super().__init__(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm, **options)
        layers = dict(attn_temp=Attention(hidden_size, num_heads, qk_norm=qk_norm))
        self.add_layers(**(dict(norm_temp=self.norm(hidden_size), **layers) if temporal_norm else layers))

    @property
    def attention_branches(self) -> int:
        return 2 if self.temporal_norm else 1

    def output_projections(self) -> list[nn.Linear]:
        return super().output_projections() + [self.attn_temp.proj]

    def self_attention(self, x, rows, positions: Positions, prefix_mask=None) -> torch.Tensor:
        x = super().self_attention(x, rows, positions, prefix_mask)
        attn = partial(attend, self.attn_temp, temporal=True, rope=positions.rope(True, x.shape[0]),
                       prefix_mask=prefix_mask)
        if self.temporal_norm:
            return x + _branch(attn, self.norm_temp(x), rows and rows[3:6])
        x_t = x if positions.temporal_sincos is None else x + positions.temporal_sincos[:, :, None].to(x.dtype)
        return x + rows[2] * attn(x_t)


class STDiT(nn.Module):
    """Spatial-temporal DiT of the PixArt-α family (see the module docstring for the table
    of published models and :mod:`lvdm.models.presets` for them by name).

    Args:
        in_channels: latent channels.
        pred_sigma: the model also predicts a variance (``2·in_channels`` outputs, as the
            published checkpoints); :meth:`forward` returns the first ``in_channels``.
        patch_size: ``(pt, ph, pw)`` spacetime patch; an int means ``(1, p, p)``.
        hidden_size, depth, num_heads, mlp_ratio: transformer dimensions.
        context_dim: width of the text encoder's token embeddings (T5-XXL: 4096).
        context_length: tokens of the learned null caption (Open-Sora's ``y_embedding``),
            used when ``forward`` gets no ``context``; 0 for none.
        temporal: ``"none"`` (an image model applied to each frame), ``"inline"``
            (:class:`STDiTBlock`) or ``"blocks"`` (a temporal :class:`PixArtBlock` after each
            spatial block).
        temporal_cross_attention: the temporal blocks attend to the text too (STDiT3: yes,
            Latte: no).
        temporal_position: where frame positions enter: ``"sincos_stream"`` (Latte: added to
            the tokens after spatial block 0), ``"sincos_branch"`` (STDiT: added to block 0's
            temporal-attention input only), ``"rope"`` (STDiT3: rotary on temporal q/k) or
            ``"none"``. Only ``"sincos_stream"`` changes the tokens themselves, so it is the one
            layout whose new temporal layers are not the identity at a phase hand-off.
        position: ``"sincos_2d"`` (the published models) or ``"rope_3d"``: a 3D rotary code
            on every self-attention's queries and keys (Open-Sora 2.0 / Wan), no additive code;
            then ``temporal_position`` must be ``"none"``.
        base_size: the patch grid the 2D code is stretched to (PixArt: ``sample_size //
            patch``; None: positions 0 … n-1, Open-Sora).
        interpolation_scale: positions are divided by this (PixArt: ``max(sample_size // 64,
            1)``; Open-Sora 1.0: its ``space_scale``, 0.5 at 256 px).
        time_scale: frame positions of the temporal sin-cos code are divided by this
            (Open-Sora 1.0's ``time_scale``: 2/3 in its 64- and 360-frame 512 px configs).
        resolution_scale: Open-Sora 1.2's position scale instead of the two above: the
            reference size in pixels (its ``input_sq_size``, 512); positions are divided by
            ``√(H·W) / resolution_scale`` of the pixel resolution (``forward``'s ``resolution``,
            else the latent size × ``latent_scale``) and stretched to a base grid of
            ``round(√(h·w))`` patches.
        qk_norm: RMS-normalise self-attention queries and keys (STDiT3).
        size_conditioning: PixArt-α 1024's micro-conditions: resolution ``(h, w)`` in pixels
            and aspect ratio ``h / w``, each embedded to ``hidden_size / 3``.
        fps_conditioning: Open-Sora 1.2's frame-rate condition.
        latent_scale: pixels per latent pixel, to derive the resolution micro-condition when
            ``forward`` is not given one (8 for the SD VAE).
        default_fps: the fps condition when ``forward`` is not given one.
    """

    #: The unit distributed code wraps, checkpoints and compiles (``STDiTBlock`` is a
    #: ``PixArtBlock``; so are the temporal blocks).
    block_class = PixArtBlock

    #: Where sequence parallelism splits this model: the tokens ``[B, T, S, D]`` entering the
    #: first spatial block are cut along the frames (dim 1) into equal chunks; every spatial and
    #: temporal block runs on its rank's frames, with the per-frame inputs cut alike (the
    #: modulations ``mods`` and ``c`` when they are per frame, the frame position codes); the
    #: final layer's output is gathered again. Attention within a frame and text
    #: cross-attention stay local; attention across frames is ``sharded``.
    sequence_parallel_plan = SequenceSplit(
        blocks=("blocks", "temporal_blocks"), tokens="x", grid=None, gather="final_layer",
        follow_split=("mods", "positions", "c"),
    )

    #: Keyword micro-conditions ``forward`` takes (used when the model was built with them).
    micro_conditions = ("resolution", "aspect_ratio", "fps")

    #: Settings of the non-learned position codes: ``init_from`` refuses weights trained under
    #: other values (the backbone contract).
    fixed_position_settings = ("position", "base_size", "interpolation_scale", "resolution_scale")

    #: Linears LoRA may adapt: attention (self, temporal, cross) and MLP projections.
    lora_targets = r"(temporal_)?blocks\.\d+\..*\b(qkv|q|kv|proj|fc1|fc2)"

    def __init__(
        self,
        in_channels: int = 4,
        pred_sigma: bool = False,
        patch_size: int | Sequence[int] = (1, 2, 2),
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        context_dim: int = 4096,
        context_length: int = 0,
        temporal: Temporal = "blocks",
        temporal_cross_attention: bool = True,
        temporal_position: TemporalPosition = "rope",
        position: Position = "sincos_2d",
        base_size: Optional[int] = None,
        interpolation_scale: float = 1.0,
        time_scale: float = 1.0,
        resolution_scale: Optional[int] = None,
        qk_norm: bool = False,
        size_conditioning: bool = False,
        fps_conditioning: bool = False,
        latent_scale: int = 8,
        default_fps: float = 24.0,
    ):
        super().__init__()
        self._check_options(temporal, temporal_position, position, hidden_size, size_conditioning, time_scale)
        if isinstance(patch_size, int):
            patch_size = (1, patch_size, patch_size)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if pred_sigma else in_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.context_dim, self.context_length = context_dim, context_length
        self.temporal, self.temporal_position, self.position = temporal, temporal_position, position
        self.base_size, self.interpolation_scale = base_size, float(interpolation_scale)
        self.time_scale = float(time_scale)
        self.resolution_scale = resolution_scale
        self.size_conditioning, self.fps_conditioning = size_conditioning, fps_conditioning
        self.latent_scale, self.default_fps = latent_scale, float(default_fps)

        self._build_embedders()
        self._build_blocks(depth, mlp_ratio, qk_norm, temporal_cross_attention)
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels, modulated=True,
                                      adaln_single=True)
        self.initialize_weights()

    def _build_embedders(self) -> None:
        """Patch, timestep and micro-condition embedders, the shared ``t_block``, the caption
        projection and the learned null caption."""
        d = self.hidden_size
        self.x_embedder = PatchEmbed3D(self.in_channels, d, self.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        if self.size_conditioning:
            self.resolution_embedder = TimestepEmbedder(d // 3)
            self.aspect_ratio_embedder = TimestepEmbedder(d // 3)
        if self.fps_conditioning:
            self.fps_embedder = TimestepEmbedder(d)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.context_proj = Mlp(self.context_dim, d, d)
        if self.context_length:
            null = torch.randn(self.context_length, self.context_dim) / self.context_dim**0.5
            self.register_buffer("null_context", null)

    def _build_blocks(self, depth: int, mlp_ratio: float, qk_norm: bool, temporal_cross_attention: bool) -> None:
        d, heads = self.hidden_size, self.num_heads
        if self.temporal == "inline":
            self.blocks = nn.ModuleList(STDiTBlock(d, heads, mlp_ratio, qk_norm) for _ in range(depth))
        else:
            self.blocks = nn.ModuleList(PixArtBlock(d, heads, mlp_ratio, qk_norm=qk_norm) for _ in range(depth))
        if self.temporal == "blocks":
            self.temporal_blocks = nn.ModuleList(
                PixArtBlock(d, heads, mlp_ratio, temporal=True, cross_attention=temporal_cross_attention,
                            qk_norm=qk_norm)
                for _ in range(depth)
            )

    @staticmethod
    def _check_options(temporal, temporal_position, position, hidden_size, size_conditioning, time_scale) -> None:
        if temporal not in ("none", "inline", "blocks"):
            raise ValueError(f"temporal must be none, inline or blocks, got {temporal!r}")
        allowed = {"none": ("none",), "inline": ("none", "sincos_branch", "rope"),
                   "blocks": ("none", "sincos_stream", "rope")}[temporal]
        if temporal_position not in allowed:
            raise ValueError(f"temporal={temporal!r} takes temporal_position in {allowed}, got {temporal_position!r}")
        if position not in ("sincos_2d", "rope_3d"):
            raise ValueError(f"position must be sincos_2d or rope_3d, got {position!r}")
        if position == "rope_3d" and temporal_position != "none":
            raise ValueError("position='rope_3d' already codes time: set temporal_position='none'")
        if size_conditioning and hidden_size % 3:
            raise ValueError(f"size_conditioning embeds 3 scalars of hidden_size/3: {hidden_size} is not divisible by 3")
        if not time_scale > 0:
            raise ValueError(f"STDiT.time_scale must be > 0, got {time_scale}")

    def all_blocks(self) -> list[PixArtBlock]:
        return list(self.blocks) + list(getattr(self, "temporal_blocks", []))

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) timestep / caption embedders, zero micro-condition outputs,
        and every block the identity (zero residual output projections), zero final linear."""

        init_linears_and_patches(self)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1],
                       self.context_proj.fc1, self.context_proj.fc2):
            nn.init.normal_(linear.weight, std=0.02)
        # a new micro-condition starts as "no change" (Open-Sora's fps embedder init)
        for name in ("resolution_embedder", "aspect_ratio_embedder", "fps_embedder"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).mlp[2].weight)
        for block in self.all_blocks():
            for linear in block.output_projections():
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        zero_final_layer(self.final_layer)

    def forward_flops(self, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> dict[str, int]:
        """The FLOP model (backbone contract): forward FLOPs by component at a per-sample
        timestep; ``text_len`` 0 means the learned null caption (``context_length`` tokens)."""
        t, h, w = patch_grid(self.patch_size, latent_thw)
        d, b, s, n = self.hidden_size, batch_size, h * w, t * h * w
        L = int(text_len) or self.context_length
        out: dict[str, int] = {}
        out["patch_embed"] = b * mm(n, self.in_channels * math.prod(self.patch_size), d)
        out["timestep_embed"] = b * sum(self._embedder_flops(e) * k for e, k in self._embedders())
        out["t_block"] = b * mm(1, d, 6 * d)
        out["text_proj"] = b * (mm(L, self.context_dim, d) + mm(L, d, d))
        for block in self.all_blocks():
            attention_flops(out, b, s if block.temporal else t, t if block.temporal else s, d)
            if isinstance(block, STDiTBlock):
                attention_flops(out, b, s, t, d)
            if block.cross_attn is not None:
                cross_attention_flops(out, b, n, L, d)
            mlp_flops(out, b, n, d, block.mlp.fc1.out_features)
        out["final_layer"] = b * mm(n, d, self.final_layer.linear.out_features)
        return out

    def _embedders(self) -> list[tuple[TimestepEmbedder, int]]:
        """The sinusoidal-code MLPs of one sample and how many scalars each embeds."""
        found = [(self.t_embedder, 1)]
        if self.size_conditioning:
            found += [(self.resolution_embedder, 2), (self.aspect_ratio_embedder, 1)]
        if self.fps_conditioning:
            found.append((self.fps_embedder, 1))
        return found

    @staticmethod
    def _embedder_flops(embedder: TimestepEmbedder) -> int:
        first, second = embedder.mlp[0], embedder.mlp[2]
        return mm(1, first.in_features, first.out_features) + mm(1, second.in_features, second.out_features)

    # ----------------------------------------------------------------------------- conditioning
    def _embed_timestep(self, timestep: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """``[B]`` (or scalar) → ``[B, 1, D]``; per-frame ``[B, T]`` → ``[B, T, D]``."""
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        if timestep.ndim == 1:
            return self.t_embedder(timestep)[:, None]
        if timestep.shape != (b, t):
            raise ValueError(f"per-frame timesteps must be [B, T] = [{b}, {t}] (latent frames after patching), "
                             f"got {list(timestep.shape)}")
        return self.t_embedder(timestep.reshape(-1)).view(b, t, -1)

    def _micro_conditions(self, x: torch.Tensor, resolution, aspect_ratio, fps) -> Optional[torch.Tensor]:
        """``[B, D]`` added to the timestep embedding (None without micro-conditions)."""
        b, dtype, extra = x.shape[0], self.t_block[1].weight.dtype, None
        if self.size_conditioning:
            if resolution is None:  # the pixel size the latent decodes to
                resolution = torch.tensor([x.shape[-2] * self.latent_scale, x.shape[-1] * self.latent_scale])
            resolution = torch.as_tensor(resolution, device=x.device, dtype=torch.float32).reshape(-1, 2).expand(b, 2)
            if aspect_ratio is None:
                aspect_ratio = resolution[:, 0] / resolution[:, 1]
            aspect_ratio = torch.as_tensor(aspect_ratio, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
            res = self.resolution_embedder(resolution.reshape(-1)).reshape(b, -1)
            extra = torch.cat([res, self.aspect_ratio_embedder(aspect_ratio)], dim=1).to(dtype)
        if self.fps_conditioning:
            fps = self.default_fps if fps is None else fps
            fps = torch.as_tensor(fps, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
            emb = self.fps_embedder(fps)
            extra = emb if extra is None else extra + emb
        return extra

    def _position_scale(self, x: torch.Tensor, h: int, w: int, resolution) -> tuple[Optional[int], float]:
        """(base grid, interpolation scale) of the 2D code for a latent with an h × w patch grid."""
        if not self.resolution_scale:
            return self.base_size, self.interpolation_scale
        if resolution is None:
            rh, rw = x.shape[-2] * self.latent_scale, x.shape[-1] * self.latent_scale
        else:  # one scale per batch, from its first sample (as Open-Sora 1.2)
            rh, rw = (float(v) for v in torch.as_tensor(resolution).reshape(-1, 2)[0])
        return round(math.sqrt(h * w)), math.sqrt(rh * rw) / self.resolution_scale

    def _context(self, context, context_mask, b: int):
        if context is None:
            if not hasattr(self, "null_context"):
                raise ValueError("this STDiT has no null caption (context_length=0): pass context")
            context, context_mask = self.null_context[None].expand(b, -1, -1), None
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context has width {context.shape[-1]}, the model expects context_dim={self.context_dim}")
        return self.context_proj(context), (context_mask.bool() if context_mask is not None else None)

    def _positions(self, grid: tuple[int, int, int], device: torch.device) -> Positions:
        t, h, w = grid
        head_dim = self.hidden_size // self.num_heads
        if self.position == "rope_3d":
            cos, sin = (c.to(device).view(1, t, 1, h * w, head_dim) for c in rope_3d(grid, head_dim))
            return Positions(rope_3d=(cos, sin))
        if self.temporal_position == "rope":
            return Positions(temporal_rope=tuple(c.to(device)[None] for c in rope_1d(t, head_dim)))
        if self.temporal_position == "sincos_branch":
            return Positions(temporal_sincos=sincos_frames(self.hidden_size, t, self.time_scale).to(device)[None])
        if self.temporal_position == "sincos_stream" and t > 1:
            return Positions(stream_sincos=sincos_frames(self.hidden_size, t, self.time_scale).to(device)[None])
        return Positions()

    # ------------------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        *,
        resolution: Optional[torch.Tensor] = None,
        aspect_ratio: Optional[torch.Tensor] = None,
        fps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the denoising target for latents ``x`` ``[B, C, T, H, W]`` at ``timestep``
        ``[B]`` or per latent frame ``[B, T]``, conditioned on text tokens ``context``
        ``[B, L, context_dim]`` with boolean ``context_mask`` ``[B, L]`` (None: the learned null
        caption). Micro-conditions (when the model has them): ``resolution`` ``[B, 2]`` pixels
        ``(h, w)``, ``aspect_ratio`` ``[B]``, ``fps`` ``[B]``; derived from ``x`` /
        ``default_fps`` when not given. Any latent size is taken: H, W and T are zero-padded
        at the end to whole patches and the prediction is cropped back (Open-Sora 1.2)."""
        check_latents(x, self.in_channels)
        b, _, *size = x.shape
        tokens, grid = self.x_embedder(pad_to_patches(x, self.patch_size))
        t, h, w = grid
        tokens = tokens.view(b, t, h * w, self.hidden_size)
        if self.position == "sincos_2d":
            pos = sincos_2d(self.hidden_size, h, w, *self._position_scale(x, h, w, resolution))
            tokens = tokens + pos.to(device=tokens.device, dtype=tokens.dtype)
        c = self._embed_timestep(timestep, b, t)
        extra = self._micro_conditions(x, resolution, aspect_ratio, fps)
        if extra is not None:
            c = c + extra[:, None]
        mods = self.t_block(c).unflatten(-1, (6, self.hidden_size))
        ctx, ctx_mask = self._context(context, context_mask, b)
        positions = self._positions(grid, tokens.device)
        # STDiT and Latte add their frame code in block 0 only
        later = positions._replace(temporal_sincos=None, stream_sincos=None)

        def stack(x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
            for i in range(len(self.blocks))[start:stop]:
                x = self.blocks[i](x, mods, ctx, ctx_mask, positions if i == 0 else later)
                if self.temporal == "blocks":
                    x = self.temporal_blocks[i](x, mods, ctx, ctx_mask, positions if i == 0 else later)
            return x

        tokens = self.run_blocks(tokens, lambda: self.blocks[0].modulated_input(tokens, mods), stack)
        out = self.unpatchify(self.final_layer(tokens.flatten(1, 2), c), grid)
        return out[:, : self.in_channels, : size[0], : size[1], : size[2]]

    def run_blocks(self, tokens: torch.Tensor, indicator, blocks) -> torch.Tensor:
        """The block-stack hook (backbone contract): ``blocks(tokens)`` (spatial and temporal
        blocks; ``blocks(tokens, start, stop)``: blocks ``start:stop``, each with its temporal
        block); ``indicator()`` is the first block's normalised, modulated input (TeaCache's)."""
        return blocks(tokens)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, T·S, pt·ph·pw·C_out]`` → ``[B, C_out, T·pt, H·ph, W·pw]``."""
        return unpatchify(tokens, grid, self.patch_size, self.out_channels)
