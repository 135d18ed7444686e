"""Analytic DiT FLOPs against torch.utils.flop_counter (an independent count of the real ops)."""

import pytest
import torch

from lvdm.models.dit import DiT
from lvdm.perf.step_flops import (
    DiTShape,
    count_flops,
    dit_forward_flops,
    dit_paper_gflops,
    dit_training_flops,
    sampling_flops,
)

LATENT = (4, 8, 8)  # (T, H, W): patch (2, 2, 2) → grid 2 × 4 × 4


def _tiny(conditioning, layout, context_dim=16, num_classes=0, adaln_single=False):
    torch.manual_seed(0)
    return DiT(
        in_channels=4, hidden_size=32, depth=2, num_heads=2, patch_size=(2, 2, 2), mlp_ratio=3.0,
        conditioning=conditioning, layout=layout, context_dim=context_dim, num_classes=num_classes,
        adaln_single=adaln_single,
    )


def _inputs(text_len, masked, context_dim=16, batch=2):
    x = torch.randn(batch, 4, *LATENT)
    t = torch.rand(batch) * 1000
    if not context_dim:
        return x, t, None, None
    ctx = torch.randn(batch, text_len, context_dim)
    mask = None
    if masked:
        mask = torch.ones(batch, text_len, dtype=torch.bool)
        mask[1, text_len // 2 + 1 :] = False  # second caption is shorter (padding)
    return x, t, ctx, mask


@pytest.mark.parametrize("conditioning", ["adaln", "cross_attn", "in_context"])
@pytest.mark.parametrize("layout", ["full", "spatial_temporal"])
@pytest.mark.parametrize("text_len,masked", [(1, False), (7, True)])
def test_forward_and_training_flops_match_flop_counter(conditioning, layout, text_len, masked):
    model = _tiny(conditioning, layout)
    x, t, ctx, mask = _inputs(text_len, masked)
    measured = count_flops(model, x, t, ctx, mask)
    assert dit_forward_flops(model, LATENT, text_len, batch_size=2).total == measured

    def step():
        model(x, t, ctx, mask).square().mean().backward()

    measured_train = count_flops(step)
    assert dit_training_flops(model, LATENT, text_len, batch_size=2, exact_first_layers=True) == measured_train
    # the 3× convention is within a few percent of the real count even on a tiny model
    assert abs(dit_training_flops(model, LATENT, text_len, batch_size=2) / measured_train - 1) < 0.05


@pytest.mark.parametrize("conditioning,layout", [("adaln", "full"), ("cross_attn", "spatial_temporal")])
def test_adaln_single_flops_match_flop_counter_with_and_without_checkpointing(conditioning, layout):
    """adaLN-single: one shared modulation linear per sample (``t_block``), no per-block or
    final-layer modulation linear; activation checkpointing recomputes the blocks, not t_block."""
    from lvdm.distributed.activation_checkpointing import apply_activation_checkpointing

    model = _tiny(conditioning, layout, adaln_single=True)
    per_block = _tiny(conditioning, layout)
    x, t, ctx, mask = _inputs(7, True)
    fwd = dit_forward_flops(model, LATENT, 7, batch_size=2)
    assert fwd.total == count_flops(model, x, t, ctx, mask)
    assert "adaln" not in fwd.components and fwd.components["t_block"] > 0
    # the counter sees the difference too: depth per-block linears + the final one → one t_block
    n_mod = 6 if layout == "full" else 9
    saved = count_flops(per_block, x, t, ctx, mask) - count_flops(model, x, t, ctx, mask)
    assert saved == 2 * 2 * 32 * (2 * n_mod * 32 + 2 * 32) - 2 * 2 * 32 * n_mod * 32

    def step():
        model(x, t, ctx, mask).square().mean().backward()

    assert dit_training_flops(model, LATENT, 7, batch_size=2, exact_first_layers=True) == count_flops(step)
    apply_activation_checkpointing(model, 1.0)
    recomputed = dit_training_flops(model, LATENT, 7, batch_size=2, checkpoint_fraction=1.0, exact_first_layers=True)
    assert recomputed == count_flops(step)


@pytest.mark.parametrize("conditioning", ["adaln", "in_context"])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_class_conditional_and_unconditional(conditioning, num_classes):
    model = _tiny(conditioning, "full", context_dim=0, num_classes=num_classes)
    x, t, _, _ = _inputs(0, False, context_dim=0)
    labels = torch.tensor([1, 3]) if num_classes else None
    measured = count_flops(model, x, t, None, None, labels)
    assert dit_forward_flops(model, LATENT, batch_size=2).total == measured


def test_shape_from_kwargs_matches_built_model_and_counts_parameters():
    model = _tiny("cross_attn", "spatial_temporal")
    shape = DiTShape.from_kwargs(
        in_channels=4, hidden_size=32, depth=2, num_heads=2, patch_size=(2, 2, 2), mlp_ratio=3.0,
        conditioning="cross_attn", layout="spatial_temporal", context_dim=16,
    )
    assert shape == DiTShape.from_model(model)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    assert dit_forward_flops(shape, LATENT, 5).total == dit_forward_flops(model, LATENT, 5).total


def test_dit_xl2_matches_the_dit_paper():
    """DiT paper, Table 4: DiT-XL/2 is 118.6 Gflops at 256² and 524.6 at 512² (MACs), 675M params."""
    shape = DiTShape.from_kwargs(size="XL/2", num_classes=1000)
    assert round(shape.num_params / 1e6) == 675
    assert dit_paper_gflops(shape, (1, 32, 32)) == pytest.approx(118.6, abs=0.1)
    assert dit_paper_gflops(shape, (1, 64, 64)) == pytest.approx(524.6, abs=0.1)


def test_checkpointing_and_guidance_conventions():
    model = _tiny("cross_attn", "full")
    fwd = dit_forward_flops(model, LATENT, 5)
    blocks = sum(v for k, v in fwd.components.items() if k not in ("patch_embed", "timestep_embed", "text_proj", "final_layer"))
    assert dit_training_flops(model, LATENT, 5, checkpoint_fraction=1.0) == 3 * fwd.total + blocks
    assert sampling_flops(model, LATENT, 5, num_steps=10, guidance=True) == 10 * dit_forward_flops(model, LATENT, 5, 2).total
    with pytest.raises(ValueError, match="checkpoint_fraction"):
        dit_training_flops(model, LATENT, 5, checkpoint_fraction=1.5)
    # a partial patch is padded to a whole one (the model pads odd sizes): counted as one
    assert dit_forward_flops(model, (3, 7, 7), 5).total == dit_forward_flops(model, (4, 8, 8), 5).total
    with pytest.raises(ValueError, match="text_len"):
        dit_forward_flops(model, LATENT, 0)
