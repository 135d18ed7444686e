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

from typing import Callable, Literal, Optional, Sequence

import torch
from torch import nn

from lvdm.models.embeddings import LabelEmbedder, PatchEmbed3D, TimestepEmbedder, check_latents, sincos_pos_embed_3d
from lvdm.models.flops import DiTShape
from lvdm.models.layers import FinalLayer, gated, init_linears_and_patches, modulate, unpatchify, zero_final_layer
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.ops.attention import attention

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
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """One transformer block: self-attention (full, or spatial then temporal), an optional
    cross-attention to the text tokens, and an MLP, each a pre-norm residual branch.

    With ``adaln`` / ``cross_attn`` conditioning each self-attention and MLP branch is
    modulated by (shift, scale, gate) regressed from the conditioning vector ``c``; with
    ``in_context`` the norms are plain LayerNorms and ``num_prefix`` condition tokens lead the
    sequence.

    With ``adaln_single`` the block owns no modulation linear: ``c`` is then the output of the
    model's shared ``t_block`` (``[B, 3·(n_attn+1)·D]``, one (shift, scale, gate) triple per
    branch) and the block adds its learned ``scale_shift_table`` ``[3·(n_attn+1), D]`` to it.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        conditioning: Conditioning = "adaln",
        layout: Layout = "full",
        qk_norm: bool = False,
        adaln_single: bool = False,
        position: Literal["sincos_3d", "sincos_2d"] = "sincos_3d",
        timestep_freq_shift: float = 0.0,
    ):
        super().__init__()
        if adaln_single and conditioning == "in_context":
            raise ValueError("adaln_single needs adaln or cross_attn conditioning (in_context has no modulation)")
        self.conditioning = conditioning
        self.layout = layout
        self.modulated = conditioning != "in_context"
        self.adaln_single = adaln_single
        n_attn = 1 if layout == "full" else 2
        affine = not self.modulated
        self.attn_norms = nn.ModuleList(
            nn.LayerNorm(hidden_size, elementwise_affine=affine, eps=1e-6) for _ in range(n_attn)
        )
        self.attns = nn.ModuleList(Attention(hidden_size, num_heads, qk_norm=qk_norm) for _ in range(n_attn))
        if conditioning == "cross_attn":
            self.cross_norm = nn.LayerNorm(hidden_size, eps=1e-6)
            self.cross_attn = Attention(hidden_size, num_heads, cross=True, qk_norm=qk_norm)
        self.mlp_norm = nn.LayerNorm(hidden_size, elementwise_affine=affine, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.num_modulations = 3 * (n_attn + 1) if self.modulated else 0
        if adaln_single:
            # PixArt's initialisation for the shift/scale rows; the gate rows are zeroed by zero_init
            self.scale_shift_table = nn.Parameter(torch.randn(self.num_modulations, hidden_size) / hidden_size**0.5)
        elif self.modulated:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.num_modulations * hidden_size))

    def zero_init(self) -> None:
        """Make the block the identity: zero adaLN (gates = 0) and residual output projections.

        With ``adaln_single`` only the table's gate rows are zeroed here: the block is the
        identity once the shared ``t_block`` output is zero too (``DiT.initialize_weights``)."""
        if self.adaln_single:
            with torch.no_grad():
                self.scale_shift_table[2::3].zero_()  # rows (shift, scale, gate) per branch
        elif self.modulated:
            nn.init.zeros_(self.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.adaLN_modulation[-1].bias)
        else:
            for attn in self.attns:
                nn.init.zeros_(attn.proj.weight)
                nn.init.zeros_(attn.proj.bias)
            nn.init.zeros_(self.mlp.fc2.weight)
            nn.init.zeros_(self.mlp.fc2.bias)
        if self.conditioning == "cross_attn":
            nn.init.zeros_(self.cross_attn.proj.weight)
            nn.init.zeros_(self.cross_attn.proj.bias)

    def _self_attention(self, i: int, h: torch.Tensor, grid, num_prefix: int, prefix_mask) -> torch.Tensor:
        """Attention branch ``i`` on normalised tokens ``h`` ``[B, P + N, D]`` (P condition tokens)."""
        attn = self.attns[i]
        if self.layout == "full":  # keys are the whole sequence: sharded under sequence parallelism
            return attn(h, key_mask=prefix_mask, sharded=True)
        b, _, d = h.shape
        t, hh, ww = grid
        prefix, video = h[:, :num_prefix], h[:, num_prefix:]
        if i == 0:  # spatial: attention within each frame (condition tokens joined to every frame)
            frames = video.reshape(b * t, hh * ww, d)
            mask = None
            if num_prefix:
                frames = torch.cat([prefix.repeat_interleave(t, dim=0), frames], dim=1)
                frame_keys = torch.ones(b * t, hh * ww, dtype=torch.bool, device=h.device)
                mask = torch.cat([prefix_mask.repeat_interleave(t, dim=0), frame_keys], dim=1)
            out = attn(frames, key_mask=mask)
            video_out = out[:, num_prefix:].reshape(b, t * hh * ww, d)
            # each condition token takes the mean of its per-frame updates
            prefix_out = out[:, :num_prefix].reshape(b, t, num_prefix, d).mean(1)
            return torch.cat([prefix_out, video_out], dim=1)
        # temporal: attention across frames at each spatial position (condition tokens untouched);
        # the frames are split across ranks under sequence parallelism
        cols = video.reshape(b, t, hh * ww, d).transpose(1, 2).reshape(b * hh * ww, t, d)
        out = attn(cols, sharded=True).reshape(b, hh * ww, t, d).transpose(1, 2).reshape(b, t * hh * ww, d)
        return torch.cat([torch.zeros_like(prefix), out], dim=1)

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
        if self.adaln_single:  # c: the shared t_block output, one row per (shift, scale, gate)
            rows = c.unflatten(-1, (self.num_modulations, -1))  # [B, (F,) n, D]
            mods = (self.scale_shift_table.to(rows.dtype) + rows).unbind(-2)
        elif self.modulated:
            mods = self.adaLN_modulation(c).chunk(self.num_modulations, dim=-1)
        for i, norm in enumerate(self.attn_norms):
            if self.modulated:
                shift, scale, gate = mods[3 * i : 3 * i + 3]
                x = x + gated(self._self_attention(i, modulate(norm(x), shift, scale), grid, 0, None), gate)
            else:
                x = x + self._self_attention(i, norm(x), grid, num_prefix, prefix_mask)
        if self.conditioning == "cross_attn":
            x = x + self.cross_attn(self.cross_norm(x), context=context, key_mask=context_mask)
        if self.modulated:
            shift, scale, gate = mods[-3:]
            return x + gated(self.mlp(modulate(self.mlp_norm(x), shift, scale)), gate)
        return x + self.mlp(self.mlp_norm(x))


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
        _check_positive(in_channels=in_channels, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                        mlp_ratio=mlp_ratio, out_channels=1 if out_channels is None else out_channels)
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

        self.x_embedder = PatchEmbed3D(in_channels, hidden_size, self.patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        if self.adaln_single:
            # the one modulation linear shared by all blocks (PixArt / STDiT ``t_block``)
            n_mod = 3 * ((1 if layout == "full" else 2) + 1)
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n_mod * hidden_size))
        if num_classes:
            self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        elif context_dim:
            # caption projection (PixArt): text tokens → hidden width
            self.context_proj = Mlp(context_dim, hidden_size, hidden_size)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, conditioning, layout, qk_norm, self.adaln_single)
            for _ in range(depth)
        )
        patch_volume = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.final_layer = FinalLayer(hidden_size, patch_volume, self.out_channels, conditioning != "in_context",
                                      self.adaln_single)
        self.initialize_weights()

    #: The unit that distributed code wraps, shards and checkpoints (see ``lvdm.distributed``).
    block_class = DiTBlock

    #: Where sequence parallelism splits this model (``lvdm.distributed`` applies it with hooks;
    #: ``forward`` is single-device code): the patch tokens ``[B, t*h*w, D]`` (t-major, positions
    #: added) entering the first block are cut along dim 1 into equal contiguous chunks of whole
    #: latent frames, the blocks see the local grid ``(t // P, h, w)``, and the final layer's
    #: output (per token) is gathered again. Full 3D and temporal attention are ``sharded`` (their
    #: keys live on all ranks); spatial and text cross-attention stay local. Per-token block
    #: inputs named in ``follow_split`` are cut like the tokens: the per-frame conditioning
    #: ``c`` ``[B, t, ...]`` of masked-frame conditioning (per-sample ``c`` ``[B, D]`` is not
    #: cut). ``in_context`` is refused.
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
        image: ``T = 1``) is padded by repeating the last frame, and the prediction cut back to
        ``T`` frames."""
        check_latents(x, self.in_channels)
        b, _, t, h, w = x.shape
        if t % self.patch_size[0]:  # images and odd lengths: repeat the last frame to whole temporal patches
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, -t % self.patch_size[0], -1, -1)], dim=2)
        tokens, grid = self.x_embedder(x)
        if self.position == "sincos_2d":
            from lvdm.models.stdit import sincos_2d  # stdit imports this module

            pos = sincos_2d(self.hidden_size, grid[1], grid[2], None, 1.0).repeat(grid[0], 1).to(tokens)
        else:
            pos = sincos_pos_embed_3d(self.hidden_size, grid, self.base_grid, device=tokens.device).to(tokens.dtype)
        tokens = tokens + pos[None]
        c, ctx, ctx_mask = self._condition(timestep, x, context, context_mask, class_labels)

        num_prefix, prefix_mask = 0, None
        if self.conditioning == "in_context":
            prefix = [c[:, None]] + ([ctx] if ctx is not None else [])
            prefix = torch.cat(prefix, dim=1)
            num_prefix = prefix.shape[1]
            ones = torch.ones(b, num_prefix, dtype=torch.bool, device=x.device)
            if ctx_mask is not None:
                ones[:, 1:] = ctx_mask
            n = tokens.shape[1]
            video_keys = torch.ones(b, n, dtype=torch.bool, device=x.device)
            prefix_mask = ones
            full_mask = torch.cat([ones, video_keys], dim=1)
            tokens = torch.cat([prefix, tokens], dim=1)
            # full layout attends over prefix + video at once; ST layout needs the prefix part only
            mask = full_mask if self.layout == "full" else prefix_mask
            c = None
        else:
            mask = None

        block_c = self.t_block(c) if self.adaln_single else c  # per sample, or per frame (cut with the frames under SP)
        for block in self.blocks:
            tokens = block(tokens, block_c, grid, ctx, ctx_mask, num_prefix, mask)
        tokens = self.final_layer(tokens[:, num_prefix:], c)
        return self.unpatchify(tokens, grid)[:, :, :t]

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return unpatchify(tokens, grid, self.patch_size, self.out_channels)
