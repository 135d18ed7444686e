"""Analytic FLOPs of a backbone's forward pass and training step, from the FLOP model the
backbone declares (``forward_flops``, :mod:`lvdm.models.contract`; DiT's and STDiT's are in
:mod:`lvdm.models.flops`).

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
from typing import Sequence, Union

import torch

from lvdm.models.contract import Backbone
from lvdm.models.flops import BLOCK_PARTS, DiTShape, mm, patch_grid

#: A backbone (any device, ``meta`` included) or a :class:`DiTShape`: anything with the
#: contract's ``forward_flops`` and ``patch_size``.
FlopModel = Union[Backbone, DiTShape]


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


def dit_forward_flops(
    model: FlopModel,
    latent_thw: Sequence[int],
    text_len: int = 0,
    batch_size: int = 1,
) -> FlopsBreakdown:
    """FLOPs of one backbone forward pass on ``batch_size`` latents of ``(T, H, W)``.

    Args:
        model: a backbone (``DiT``, ``STDiT``; any device, ``meta`` included) or a :class:`DiTShape`.
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
    return FlopsBreakdown(dict(model.forward_flops(latent_thw, text_len, batch_size)))


def input_grad_free_flops(model: FlopModel, latent_thw: Sequence[int], text_len: int = 0, batch_size: int = 1) -> int:
    """FLOPs of the first layers whose inputs need no gradient (patch embedding, timestep MLP's
    first linear, text projection's first linear): their backward costs one forward, not two."""
    t, h, w = patch_grid(model.patch_size, latent_thw)
    pt, ph, pw = model.patch_size
    d = model.hidden_size
    frequency_dim = model.frequency_dim if isinstance(model, DiTShape) else model.t_embedder.frequency_dim
    flops = batch_size * (mm(t * h * w, model.in_channels * pt * ph * pw, d) + mm(1, frequency_dim, d))
    if model.context_dim:
        flops += batch_size * mm(int(text_len), model.context_dim, d)
    return flops


def dit_training_flops(
    model: FlopModel,
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
    blocks = sum(v for k, v in fwd.components.items() if k in BLOCK_PARTS)
    total = 3 * fwd.total + round(checkpoint_fraction * blocks)
    if exact_first_layers:
        total -= input_grad_free_flops(model, latent_thw, text_len, batch_size)
    return int(total)


def sampling_flops(
    model: FlopModel,
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


def dit_paper_gflops(model: FlopModel, latent_thw: Sequence[int], text_len: int = 0) -> float:
    """Forward "Gflops" as the DiT paper reports them (multiply-accumulates = FLOPs / 2)."""
    return dit_forward_flops(model, latent_thw, text_len).total / 2e9


__all__ = [
    "DiTShape",
    "FlopModel",
    "FlopsBreakdown",
    "count_flops",
    "dit_forward_flops",
    "dit_paper_gflops",
    "dit_training_flops",
    "input_grad_free_flops",
    "meta_forward_flops",
    "sampling_flops",
]
