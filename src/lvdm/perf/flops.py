"""Analytic FLOPs of a :class:`~lvdm.models.dit.DiT` forward pass and training step.

Convention (the one ``torch.utils.flop_counter.FlopCounterMode``, nanoGPT and PaLM's MFU use):
a matrix product ``[m, k] @ [k, n]`` costs ``2·m·n·k`` FLOPs, a convolution ``2 · output
elements · (in_channels · kernel volume)``, attention ``4 · Lq · Lk · head_dim · heads``
(scores and values). Elementwise work (norms, activations, softmax, adaLN modulation,
bias adds, position codes) is not counted: it is a few percent of the total and is
memory-bound, so it does not belong in an MFU numerator.

The DiT paper (and the Sora cost analysis built on it) reports *multiply-accumulates* under
the name "Gflops": DiT-XL/2 at 512×512 is "524.6 Gflops" there and 1049 GFLOPs here. Functions
that reproduce those documents say so (:func:`dit_paper_gflops`).

Training FLOPs per sample are ``3 ×`` the forward (the backward pass costs two forwards:
gradients with respect to activations and to weights); with activation checkpointing the
checkpointed blocks run their forward a second time, adding ``fraction × blocks' forward``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from lvdm.models.dit import DiT


@dataclass(frozen=True)
class DiTShape:
    """The dimensions of a DiT that its FLOPs depend on (read from a model, or built from a
    size preset without allocating one).

    Args:
        hidden_size: token width ``D``.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_hidden: MLP hidden width (``mlp_ratio · D``).
        patch_size: ``(pt, ph, pw)``.
        in_channels: latent channels.
        out_channels: predicted channels.
        conditioning: ``adaln``, ``cross_attn`` or ``in_context``.
        layout: ``full`` or ``spatial_temporal``.
        context_dim: text token width (0: no text).
        num_classes: class labels (0: none).
        num_params: parameter count (0 if unknown).
        block_params: parameters of one block (0 if unknown).
        frequency_dim: width of the sinusoidal timestep code fed to the timestep MLP.
        adaln_single: one shared modulation linear (``t_block``) instead of one per block and
            one in the final layer (PixArt / STDiT adaLN-single).
    """

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
    def from_model(cls, model: DiT) -> "DiTShape":
        """Read the shape of a built ``DiT`` (also works on a ``meta``-device model)."""
        if not isinstance(model, DiT):
            raise TypeError(f"expected an lvdm DiT, got {type(model).__name__}")
        return cls(
            hidden_size=model.hidden_size,
            depth=len(model.blocks),
            num_heads=model.num_heads,
            mlp_hidden=model.blocks[0].mlp.fc1.out_features if len(model.blocks) else 0,
            patch_size=tuple(model.patch_size),
            in_channels=model.in_channels,
            out_channels=model.out_channels,
            conditioning=model.conditioning,
            layout=model.layout,
            context_dim=model.context_dim,
            num_classes=model.num_classes,
            num_params=sum(p.numel() for p in model.parameters()),
            block_params=sum(p.numel() for p in model.blocks[0].parameters()) if len(model.blocks) else 0,
            frequency_dim=model.t_embedder.frequency_dim,
            adaln_single=model.adaln_single,
        )

    @classmethod
    def from_kwargs(cls, **dit_kwargs) -> "DiTShape":
        """Build the shape from ``DiT`` constructor arguments on the ``meta`` device (no memory,
        no initialisation cost), so parameter counts are exact for any size."""
        with torch.device("meta"):
            model = DiT(**dit_kwargs)
        return cls.from_model(model)

    def latent_grid(self, latent_thw: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of a latent of ``(T, H, W)`` frames × rows × columns."""
        t, h, w = (int(v) for v in latent_thw)
        pt, ph, pw = self.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent (T={t}, H={h}, W={w}) is not divisible by the patch size {self.patch_size}")
        return t // pt, h // ph, w // pw


@dataclass
class FlopsBreakdown:
    """FLOPs of one forward pass, per component (``FlopCounterMode`` convention, see module
    docstring). ``total`` is their sum."""

    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def add(self, name: str, flops: int) -> None:
        self.components[name] = self.components.get(name, 0) + int(flops)

    def table(self) -> str:
        """A plain-text table of the components and their shares."""
        total = max(self.total, 1)
        rows = [f"{'component':<22} {'GFLOPs':>14} {'share':>7}"]
        for name, value in self.components.items():
            rows.append(f"{name:<22} {value / 1e9:>14.3f} {100 * value / total:>6.1f}%")
        rows.append(f"{'total':<22} {self.total / 1e9:>14.3f} {100.0:>6.1f}%")
        return "\n".join(rows)


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def _add_block_flops(out: FlopsBreakdown, s: DiTShape, b: int, grid: tuple[int, int, int], L: int,
                     prefix: int) -> None:
    """Add one transformer block's FLOPs on ``b`` samples of patch grid ``grid`` (``L`` text
    tokens, ``prefix`` condition tokens leading the sequence) to ``out``."""
    t, h, w = grid
    d, f, n, hw = s.hidden_size, s.mlp_hidden, t * h * w, h * w
    n_attn = 1 if s.layout == "full" else 2
    if s.conditioning != "in_context" and not s.adaln_single:
        out.add("adaln", b * _mm(1, d, 3 * (n_attn + 1) * d))
    if s.layout == "full":
        seq = prefix + n
        out.add("qkv_proj", b * (_mm(seq, d, 3 * d) + _mm(seq, d, d)))
        out.add("self_attention", b * 4 * seq * seq * d)
    else:
        # spatial: each frame (with the condition tokens joined) attends within itself
        seq = prefix + hw
        out.add("qkv_proj", b * t * (_mm(seq, d, 3 * d) + _mm(seq, d, d)))
        out.add("self_attention", b * t * 4 * seq * seq * d)
        # temporal: each position attends across the t frames (condition tokens skip it)
        out.add("qkv_proj", b * (_mm(n, d, 3 * d) + _mm(n, d, d)))
        out.add("self_attention", b * hw * 4 * t * t * d)
    if s.conditioning == "cross_attn":
        out.add("cross_proj", b * (_mm(n, d, d) + _mm(L, d, 2 * d) + _mm(n, d, d)))
        out.add("cross_attention", b * 4 * n * L * d)
    out.add("mlp", b * (_mm(prefix + n, d, f) + _mm(prefix + n, f, d)))


def dit_forward_flops(
    model: DiT | DiTShape,
    latent_thw: Sequence[int],
    text_len: int = 0,
    batch_size: int = 1,
) -> FlopsBreakdown:
    """FLOPs of one ``DiT`` forward pass on ``batch_size`` latents of ``(T, H, W)``.

    Args:
        model: a ``DiT`` (any device, ``meta`` included) or its :class:`DiTShape`.
        latent_thw: latent frames, height and width (before patching).
        text_len: text tokens per sample (padded length: attention runs over padding too,
            the mask only hides it), ignored by models without ``context_dim``.
        batch_size: samples in the batch (classifier-free guidance doubles it).

    Returns:
        a :class:`FlopsBreakdown` by component: ``patch_embed``, ``timestep_embed``,
        ``t_block`` (the one shared modulation linear of an ``adaln_single`` model, once per
        sample), ``text_proj``, ``adaln`` (the per-block modulation linears), ``qkv_proj``
        (self-attention input and output projections), ``self_attention`` (scores and values),
        ``cross_proj``, ``cross_attention``, ``mlp``, ``final_layer`` (with its modulation
        linear unless ``adaln_single``, where a table is added: elementwise, not counted).
    """
    s = model if isinstance(model, DiTShape) else DiTShape.from_model(model)
    t, h, w = s.latent_grid(latent_thw)
    d, b = s.hidden_size, batch_size
    n = t * h * w  # video tokens
    text = s.context_dim > 0
    L = int(text_len) if text else 0
    if text and L <= 0:
        raise ValueError("this DiT is text-conditional: give text_len > 0")
    out = FlopsBreakdown()

    pt, ph, pw = s.patch_size
    out.add("patch_embed", b * _mm(n, s.in_channels * pt * ph * pw, d))
    out.add("timestep_embed", b * (_mm(1, s.frequency_dim, d) + _mm(1, d, d)))
    n_attn = 1 if s.layout == "full" else 2
    if s.adaln_single:  # one linear per sample, outside the blocks (not recomputed by checkpointing)
        out.add("t_block", b * _mm(1, d, 3 * (n_attn + 1) * d))
    if text:
        out.add("text_proj", b * (_mm(L, s.context_dim, d) + _mm(L, d, d)))

    # condition tokens that lead the sequence (in-context conditioning): timestep + text/label
    prefix = 0
    if s.conditioning == "in_context":
        prefix = 1 + (L if text else 1 if s.num_classes else 0)
    for _ in range(s.depth):
        _add_block_flops(out, s, b, (t, h, w), L, prefix)
    if s.conditioning != "in_context" and not s.adaln_single:
        out.add("final_layer", b * _mm(1, d, 2 * d))
    out.add("final_layer", b * _mm(n, d, pt * ph * pw * s.out_channels))
    return out


def input_grad_free_flops(model: DiT | DiTShape, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> int:
    """FLOPs of the first layers whose inputs need no gradient (patch embedding, timestep MLP's
    first linear, text projection's first linear): their backward costs one forward, not two."""
    s = model if isinstance(model, DiTShape) else DiTShape.from_model(model)
    t, h, w = s.latent_grid(latent_thw)
    pt, ph, pw = s.patch_size
    flops = batch_size * (_mm(t * h * w, s.in_channels * pt * ph * pw, s.hidden_size) + _mm(1, s.frequency_dim, s.hidden_size))
    if s.context_dim:
        flops += batch_size * _mm(int(text_len), s.context_dim, s.hidden_size)
    return flops


def dit_training_flops(
    model: DiT | DiTShape,
    latent_thw: Sequence[int],
    text_len: int = 0,
    batch_size: int = 1,
    checkpoint_fraction: float = 0.0,
    exact_first_layers: bool = False,
) -> int:
    """FLOPs of one training step (forward + backward) on ``batch_size`` samples.

    Convention: ``3 × forward`` (backward = 2 × forward), plus one more forward of the
    checkpointed share of the blocks when ``checkpoint_fraction`` > 0 (activation
    checkpointing recomputes a block's forward in the backward pass).

    Args:
        model: a ``DiT`` or its :class:`DiTShape`.
        latent_thw: latent ``(T, H, W)``.
        text_len: text tokens per sample.
        batch_size: samples per step.
        checkpoint_fraction: share of the blocks that are activation-checkpointed (0..1).
        exact_first_layers: subtract the input-gradient FLOPs that are never computed (the
            inputs of the first layers need no gradient), matching what a FLOP counter sees;
            a fraction of a percent at real sizes.
    """
    if not 0.0 <= checkpoint_fraction <= 1.0:
        raise ValueError(f"checkpoint_fraction must be in [0, 1], got {checkpoint_fraction}")
    fwd = dit_forward_flops(model, latent_thw, text_len, batch_size)
    block_parts = ("adaln", "qkv_proj", "self_attention", "cross_proj", "cross_attention", "mlp")
    blocks = sum(v for k, v in fwd.components.items() if k in block_parts)
    total = 3 * fwd.total + round(checkpoint_fraction * blocks)
    if exact_first_layers:
        total -= input_grad_free_flops(model, latent_thw, text_len, batch_size)
    return int(total)


def sampling_flops(
    model: DiT | DiTShape,
    latent_thw: Sequence[int],
    text_len: int = 0,
    num_steps: int = 50,
    guidance: bool = True,
) -> int:
    """FLOPs of generating one video: ``num_steps`` forwards, two per step (conditional and
    unconditional) with classifier-free guidance."""
    per_step = dit_forward_flops(model, latent_thw, text_len, batch_size=2 if guidance else 1).total
    return int(num_steps * per_step)


def count_flops(fn, *args, **kwargs) -> int:
    """Run ``fn(*args, **kwargs)`` under ``torch.utils.flop_counter.FlopCounterMode`` with the
    math attention kernels (the CPU SDPA kernel is not registered with the counter, so it would
    count 0) and return the total FLOPs it saw."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lvdm.ops.attention import use_backend

    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]), use_backend("math"):
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def meta_forward_flops(model: torch.nn.Module, latent_shape: Sequence[int], text_len: int = 0,
                       context_dim: int = 0, batch_size: int = 1) -> int:
    """FLOPs of one forward of a denoiser (``model(x, timestep, context=, context_mask=)``, the
    signature of lvdm's DiT and STDiT) on ``batch_size`` latents of ``(C, T, H, W)`` and
    ``text_len`` text tokens of ``context_dim``, counted by :func:`count_flops` on ``meta``
    tensors: the weights are swapped for meta copies (``torch.func.functional_call``), so
    nothing is computed or allocated, on any device and at any size."""
    from torch.func import functional_call

    meta = {name: torch.empty_like(t, device="meta") for name, t in (*model.named_parameters(), *model.named_buffers())}
    x = torch.empty(batch_size, *latent_shape, device="meta")
    text = {}
    if context_dim:
        text = {"context": torch.empty(batch_size, text_len, context_dim, device="meta"),
                "context_mask": torch.ones(batch_size, text_len, dtype=torch.bool, device="meta")}
    return count_flops(functional_call, model, meta, (x, torch.zeros(batch_size, device="meta")), text)


def dit_paper_gflops(model: DiT | DiTShape, latent_thw: Sequence[int], text_len: int = 0) -> float:
    """Forward "Gflops" as the DiT paper reports them (multiply-accumulates = FLOPs / 2)."""
    return dit_forward_flops(model, latent_thw, text_len).total / 2e9


__all__ = [
    "DiTShape",
    "FlopsBreakdown",
    "count_flops",
    "dit_forward_flops",
    "dit_paper_gflops",
    "dit_training_flops",
    "input_grad_free_flops",
    "meta_forward_flops",
    "sampling_flops",
]
