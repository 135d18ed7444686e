"""diffusers' LTXVideoTransformer3DModel through lvdm's backbone contract (lvdm.models.diffusers_adapter):
the adapter's output equals the bare diffusers model's fed as LTXPipeline feeds it, the LTX-Video
2B preset's size on meta, and the diffusers-folder loader with its strict key report."""

from __future__ import annotations

import pytest
import torch
from diffusers import LTXPipeline, LTXVideoTransformer3DModel

from lvdm.models.diffusers_adapter import LTXBackbone, build_ltx
from lvdm.models.presets import from_diffusers_ltx, from_name

TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24,
            num_layers=2, caption_channels=8)


def _pipeline_forward(bare, x, t, context, mask, frame_rate=25.0):
    """LTXPipeline.__call__'s transformer call (pack, RoPE scale from the VAE's 8 × 32 × 32 and
    frame_rate, σ·1000 timesteps, the tokenizer's mask) and its unpacking."""
    frames, h, w = x.shape[2:]
    out = bare(hidden_states=LTXPipeline._pack_latents(x), encoder_hidden_states=context, timestep=t,
               encoder_attention_mask=mask, num_frames=frames, height=h, width=w,
               rope_interpolation_scale=(8 / frame_rate, 32, 32), return_dict=False)[0]
    return LTXPipeline._unpack_latents(out, frames, h, w)


@pytest.mark.parametrize("frames", [1, 5])
def test_adapter_equals_bare_diffusers_model(frames, assert_close_scaled, random_weights):
    bare = random_weights(LTXVideoTransformer3DModel(**TINY))
    model = LTXBackbone(random_weights(LTXVideoTransformer3DModel(**TINY))).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, 3, 5, generator=g)  # non-square
    t = torch.tensor([999.0, 250.0])
    context = torch.randn(2, 6, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)  # a padded caption
    with torch.no_grad():
        reference = _pipeline_forward(bare, x, t, context, mask)
        out = model(x, t, context, mask)
    assert reference.abs().max() > 1e-2, "the reference is ~0: the test could not fail"
    assert_close_scaled(out, reference)


def test_frame_rate_sets_the_rope_scale(assert_close_scaled, random_weights):
    """The adapter's frame_rate is the pipeline's: 24 fps differs from 25 fps, and matches the pipeline at 24."""
    weights = random_weights(LTXVideoTransformer3DModel(**TINY))
    model = LTXBackbone(weights, frame_rate=24.0)
    x, t, context = torch.randn(1, 4, 3, 2, 2), torch.tensor([500.0]), torch.randn(1, 3, 8)
    with torch.no_grad():
        out = model(x, t, context)
        at_24 = _pipeline_forward(weights, x, t, context, None, frame_rate=24.0)
        at_25 = _pipeline_forward(weights, x, t, context, None, frame_rate=25.0)
    assert_close_scaled(out, at_24)
    assert (out - at_25).abs().max() > 1e-4 * at_25.abs().max()


def test_errors_are_one_clear_line():
    model = build_ltx(**{k: v for k, v in TINY.items() if k != "cross_attention_dim"})
    x = torch.randn(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="LTX-Video has no learned null caption"):
        model(x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\[1, L, 8\]"):
        model(x, torch.tensor([1.0]), torch.randn(1, 3, 6))
    with torch.device("meta"):
        patched = LTXVideoTransformer3DModel(**TINY, patch_size=2)
    with pytest.raises(ValueError, match="patch_size=2"):
        LTXBackbone(patched)


def test_ltx_2b_preset_size_and_sampler_on_meta():
    """diffusers' LTXVideoTransformer3DModel with LTX-Video 0.9.x's config.json (its defaults, "2B")."""
    chosen = from_name("ltx-video-2b")
    with torch.device("meta"):
        model = chosen.build()
        official = LTXVideoTransformer3DModel()
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in official.parameters()) == chosen.num_params
    assert (model.hidden_size, len(model.blocks), model.num_heads, model.context_dim) == (2048, 28, 32, 4096)
    assert model.rope_interpolation_scale == (8 / 25, 32, 32)
    objective = chosen.sampler.build_objective()
    assert (objective.num_sampling_steps, objective.time_scale, chosen.sampler.guidance_scale) == (50, 1000.0, 3.0)
    # LTXPipeline's dynamic shift at its reference 768x512x121 (latents 16 x 16 x 24 = 6144 tokens): exp(2.7833)
    assert objective.effective_shift(torch.zeros(1, 128, 16, 16, 24)) == pytest.approx(16.17, abs=0.01)


def test_from_diffusers_ltx_loads_a_pipeline_folder(tmp_path, random_weights):
    saved = random_weights(LTXVideoTransformer3DModel(**TINY))
    saved.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    model = from_diffusers_ltx(str(tmp_path), frame_rate=24.0)
    assert isinstance(model, LTXBackbone) and model.frame_rate == 24.0
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(model.transformer.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="from_diffusers_ltx loads 'LTXVideoTransformer3DModel'"):
        from diffusers import WanTransformer3DModel

        WanTransformer3DModel(num_attention_heads=2, attention_head_dim=12, num_layers=1, ffn_dim=8, text_dim=8,
                              freq_dim=8).save_pretrained(tmp_path / "wan")
        from_diffusers_ltx(str(tmp_path / "wan"))


def test_from_diffusers_ltx_refuses_weights_of_another_config(tmp_path):
    """A config.json asking for 3 blocks over weights of 2: diffusers would initialise the third
    at random with a warning; the loader names the missing keys (the first 5 and their count)."""
    import json

    LTXVideoTransformer3DModel(**TINY).save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(ValueError, match=r"missing_keys \['transformer_blocks\.2\..*'\] … \(25\)"):
        from_diffusers_ltx(str(tmp_path))


def test_flop_model_at_768x512_121_frames_on_meta():
    """LTX-Video 2B at 768×512 × 121 frames (latent 16 × 16 × 24, 6,144 tokens, 128 caption
    tokens): the FLOP model equals torch's FlopCounterMode on meta (29.1 TFLOPs per forward)."""
    from lvdm.perf.step_flops import meta_forward_flops

    with torch.device("meta"):
        model = from_name("ltx-video-2b").build()
    counted = meta_forward_flops(model, (128, 16, 16, 24), text_len=128, context_dim=4096)
    assert sum(model.forward_flops((16, 16, 24), 128).values()) == counted == 29_112_421_842_944


def test_trains_and_samples_in_the_module(train_and_sample):
    """The tiny LTX-Video inside LatentDiffusionModule (a padded caption in the batch: its mask
    reaches the cross-attention) trains one step and samples a non-square size with guidance."""
    torch.manual_seed(0)
    denoiser = build_ltx(in_channels=3, out_channels=3, num_attention_heads=2, attention_head_dim=12, num_layers=1,
                         caption_channels=16)
    train_and_sample(denoiser, denoiser.transformer.proj_out.weight, size=(3, 4, 6))
