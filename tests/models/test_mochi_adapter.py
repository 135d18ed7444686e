"""diffusers' MochiTransformer3DModel through lvdm's backbone contract (lvdm.models.diffusers_adapter):
the adapter's output equals the bare diffusers model's fed as MochiPipeline feeds it (inverted time),
the preset's size on meta, and the FLOP model at Mochi's 848×480 × 163 frames."""

from __future__ import annotations

import pytest
import torch
from diffusers import MochiTransformer3DModel

from lvdm.models.diffusers_adapter import MochiBackbone, build_mochi
from lvdm.models.presets import from_name

TINY = dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=12,
            in_channels=4, text_embed_dim=8, time_embed_dim=8)


@pytest.mark.parametrize("frames", [1, 5])
def test_adapter_equals_bare_model_fed_as_the_pipeline(frames, assert_close_scaled, random_weights):
    """MochiPipeline passes its inverted scheduler's timestep 1000 · (1 − σ) and the T5 mask; lvdm passes
    σ · 1000. A padded caption (diffusers drops its padding per sample) and a non-square latent."""
    bare = random_weights(MochiTransformer3DModel(**TINY))
    model = MochiBackbone(random_weights(MochiTransformer3DModel(**TINY))).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, 6, 10, generator=g)  # 3 × 5 patches
    sigma = torch.tensor([0.999, 0.25])
    context = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        reference = bare(x, context, (1 - sigma) * 1000, mask, return_dict=False)[0]
        out = model(x, sigma * 1000, context, mask)
    assert reference.abs().max() > 1e-2, "the reference is ~0: the test could not fail"
    assert_close_scaled(out, reference)


def test_errors_are_one_clear_line():
    model = build_mochi(**TINY)
    x, context = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match=r"per-frame timesteps \[B, T\] = \[1, 2\] are not supported"):
        model(x, torch.ones(1, 2), context)
    with pytest.raises(ValueError, match=r"context must be \[B, L, context_dim\] = \[1, L, 8\]"):
        model(x, torch.ones(1), torch.randn(1, 5, 6))


def test_preset_on_meta():
    """diffusers' MochiTransformer3DModel() is genmo/mochi-1-preview's transformer config."""
    chosen = from_name("mochi-1-preview")
    with torch.device("meta"):
        model = chosen.build()
    assert sum(p.numel() for p in model.parameters()) == chosen.num_params
    assert (model.hidden_size, len(model.blocks), model.in_channels) == (3072, 48, 12)
    assert chosen.sampler.build_objective().target == "x0_minus_eps"


@pytest.mark.slow  # ~5 s on meta; the battery checks the same FLOP model at a tiny size
def test_flop_model_at_848x480_163_frames_on_meta():
    """Mochi 1 at 848×480 × 163 frames (latent 28 × 60 × 106, 44,520 tokens) with 256 caption tokens:
    the FLOP model equals torch's FlopCounterMode on meta."""
    from lvdm.perf.step_flops import meta_forward_flops

    with torch.device("meta"):
        model = from_name("mochi-1-preview").build()
    counted = meta_forward_flops(model, (12, 28, 60, 106), text_len=256, context_dim=4096)
    assert sum(model.forward_flops((28, 60, 106), 256).values()) == counted
    print(f"mochi-1-preview 848x480x163: {counted / 1e15:.2f} PFLOPs per forward")
