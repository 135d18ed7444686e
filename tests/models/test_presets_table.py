"""The preset table: every published configuration with its source, parameter count and sampler."""

import pytest
import torch

from lvdm.diffusion.objectives import DDPM, RectifiedFlow
from lvdm.models.presets import TABLE, from_name, preset


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_preset_has_its_parameter_count_and_sampler(name):
    chosen = from_name(name)
    with torch.device("meta"):
        model = chosen.build()
    assert sum(p.numel() for p in model.parameters()) == chosen.num_params
    assert chosen.source.startswith("github.com/")
    objective = chosen.sampler.build_objective()
    # guidance-distilled models (HunyuanVideo) embed their guidance and sample without CFG (scale 1)
    assert isinstance(objective, (DDPM, RectifiedFlow)) and chosen.sampler.guidance_scale >= 1


def test_published_sampler_settings():
    os12 = from_name("opensora-v1.2-stdit3-xl2").sampler
    flow = os12.build_objective()
    assert (flow.target, flow.num_sampling_steps, os12.guidance_scale) == ("x0_minus_eps", 30, 7.0)
    assert flow.effective_shift(torch.zeros(1, 4, 1, 64, 64)) == 1.0  # image at 512 px: no shift
    assert flow.effective_shift(torch.zeros(1, 4, 4, 64, 64)) == 2.0  # sqrt(4 latent frames)
    assert os12.null_condition == "learned_caption" and "fps" in os12.micro_conditions
    dit = from_name("dit-xl2-256").sampler
    assert (dit.guidance_scale, dit.null_condition) == (4.0, "null_class")
    assert from_name("pixart-alpha-xl2-512").sampler.build_objective().sampler == "dpm_solver"
    with pytest.raises(ValueError, match="unknown preset 'dit-xxl'; choose one of"):
        from_name("dit-xxl")


def test_pixart_256_positions_are_diffusers():
    """PixArt-XL-2-256x256 (sample_size 32): interpolation scale 1 in PixArt-α (lewei_scale) and
    diffusers (max(32 // 64, 1)); 0.5 doubled every position."""
    from diffusers import PixArtTransformer2DModel

    ref = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                   num_layers=1, sample_size=32, patch_size=2, caption_channels=8,
                                   cross_attention_dim=32)
    ours = preset("pixart-alpha-xl2-256", hidden_size=32, num_heads=2, depth=1, context_dim=8)
    from lvdm.models.stdit import sincos_2d

    code = sincos_2d(32, 16, 16, ours.base_size, ours.interpolation_scale)
    torch.testing.assert_close(code, ref.pos_embed.pos_embed[0], rtol=1e-6, atol=1e-6)  # values in [-1, 1]
