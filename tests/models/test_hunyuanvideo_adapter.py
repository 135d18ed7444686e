"""diffusers' HunyuanVideoTransformer3DModel through lvdm's backbone contract (lvdm.models.diffusers_adapter):
the adapter's output equals the bare diffusers model's fed as HunyuanVideoPipeline feeds it, and its
FLOP model (lvdm's MMDiT's of the same network) equals FlopCounterMode at 720p × 129 frames on meta."""

from __future__ import annotations

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel

from lvdm.models.diffusers_adapter import HunyuanVideoBackbone, build_hunyuanvideo

TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=8,
            pooled_projection_dim=6, rope_axes_dim=(4, 4, 4))


@pytest.mark.parametrize("frames", [1, 5])
def test_adapter_equals_bare_model_fed_as_the_pipeline(frames, assert_close_scaled, random_weights):
    """t · 1000, LLaVA tokens with the prompt mask (real tokens first), CLIP's pooled caption and the
    guidance scale × 1000, a non-square latent."""
    bare = random_weights(HunyuanVideoTransformer3DModel(**TINY))
    model = HunyuanVideoBackbone(random_weights(HunyuanVideoTransformer3DModel(**TINY))).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, 6, 10, generator=g)  # 3 × 5 patches
    t = torch.tensor([999.0, 250.0])
    context = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = torch.randn(2, 6, generator=g)
    with torch.no_grad():
        reference = bare(x, t, context, mask, pooled, torch.full((2,), 6.0) * 1000.0, return_dict=False)[0]
        out = model(x, t, context, mask, pooled_text=pooled, guidance=torch.tensor(6.0))
        other_guidance = model(x, t, context, mask, pooled_text=pooled, guidance=torch.tensor(1.0))
    assert reference.abs().max() > 1e-2, "the reference is ~0: the test could not fail"
    assert_close_scaled(out, reference)
    assert (other_guidance - out).abs().max() > 1e-3 * out.abs().max(), "guidance changes nothing"


def test_errors_are_one_clear_line():
    model = build_hunyuanvideo(**TINY)
    x, context = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match=r"per-frame timesteps \[B, T\] = \[1, 2\] are not supported"):
        model(x, torch.ones(1, 2), context)
    with pytest.raises(ValueError, match="no learned null caption"):
        model(x, torch.ones(1))
    with torch.device("meta"):
        i2v = HunyuanVideoTransformer3DModel(**TINY, image_condition_type="token_replace")
    with pytest.raises(ValueError, match="image_condition_type='token_replace'"):
        HunyuanVideoBackbone(i2v)


@pytest.mark.slow  # ~6 s on meta; the battery checks the same FLOP model at a tiny size
def test_flop_model_at_720p_129_frames_on_meta():
    """HunyuanVideo 13B (diffusers' defaults) at 1280×720 × 129 frames (latent 33 × 90 × 160, 118,800
    tokens) with 256 caption tokens: the FLOP model equals torch's FlopCounterMode on meta."""
    from lvdm.perf.step_flops import meta_forward_flops

    with torch.device("meta"):
        model = HunyuanVideoBackbone(HunyuanVideoTransformer3DModel())
    counted = meta_forward_flops(model, (16, 33, 90, 160), text_len=256, context_dim=4096)
    assert sum(model.forward_flops((33, 90, 160), 256).values()) == counted
    print(f"hunyuanvideo 720x1280x129: {counted / 1e15:.2f} PFLOPs per forward")
