"""diffusers' WanTransformer3DModel through lvdm's backbone contract (lvdm.models.diffusers_adapter):
the adapter's output equals the bare diffusers model's fed as Wan's pipeline feeds it, the
Wan 2.1 T2V 1.3B preset's size on meta, and the diffusers-folder loader."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from lvdm.models.diffusers_adapter import WanBackbone, build_wan
from lvdm.models.presets import from_diffusers_wan, from_name

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=8, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
TEXT_LENGTH = 7


def _random(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _pipeline_caption(context: torch.Tensor, lengths: list[int], max_length: int) -> torch.Tensor:
    """What diffusers' WanPipeline._get_t5_prompt_embeds gives: each caption cut at its length,
    zero-padded to max_sequence_length."""
    rows = [torch.cat([c[:n], c.new_zeros(max_length - n, c.shape[-1])]) for c, n in zip(context, lengths)]
    return torch.stack(rows)


@pytest.mark.parametrize("frames", [1, 5])
def test_adapter_equals_bare_diffusers_model(frames, assert_close_scaled):
    bare = _random(WanTransformer3DModel(**TINY))
    model = WanBackbone(_random(WanTransformer3DModel(**TINY)), text_length=TEXT_LENGTH).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, 6, 10, generator=g)  # non-square: 3 × 5 patches
    t = torch.tensor([999.0, 250.0])
    context = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # a padded caption
    with torch.no_grad():
        reference = bare(x, t, _pipeline_caption(context, [3, 5], TEXT_LENGTH), return_dict=False)[0]
        out = model(x, t, context, mask)
    assert reference.abs().max() > 1e-2, "the reference is ~0: the test could not fail"
    assert_close_scaled(out, reference)


def test_odd_latent_is_padded_to_whole_patches_and_per_frame_times_match(assert_close_scaled):
    model = WanBackbone(_random(WanTransformer3DModel(**TINY)), text_length=TEXT_LENGTH).double()
    x = torch.randn(1, 4, 2, 5, 7, dtype=torch.float64)
    t = torch.tensor([500.0], dtype=torch.float64)
    context = torch.randn(1, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, t, context)
        padded = model(torch.nn.functional.pad(x, (0, 1, 0, 1)), t, context)[..., :5, :7]
        per_frame = model(x, t[:, None].expand(1, 2), context)
    assert out.shape == x.shape
    assert_close_scaled(out, padded, rtol=1e-10)
    assert_close_scaled(per_frame, out, rtol=1e-10)


def test_text_errors_are_one_clear_line():
    model = build_wan(**TINY, text_length=4)
    x = torch.randn(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="no learned null caption"):
        model(x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="more than Wan's text_length 4"):
        model(x, torch.tensor([1.0]), torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match=r"\[1, L, 8\]"):
        model(x, torch.tensor([1.0]), torch.randn(1, 3, 6))


def test_image_to_video_transformer_is_refused():
    with torch.device("meta"):
        i2v = WanTransformer3DModel(**TINY, image_dim=8, added_kv_proj_dim=24)
    with pytest.raises(ValueError, match="image_dim=8"):
        WanBackbone(i2v)


def test_wan_1_3b_preset_size_and_sampler_on_meta():
    """diffusers' WanTransformer3DModel with Wan2.1-T2V-1.3B-Diffusers' config.json ("1.3B")."""
    chosen = from_name("wan2.1-t2v-1.3b")
    with torch.device("meta"):
        model = chosen.build()
        official = WanTransformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30,
                                         text_dim=4096, freq_dim=256, in_channels=16, out_channels=16)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in official.parameters()) == chosen.num_params
    assert (model.hidden_size, len(model.blocks), model.num_heads, model.text_length) == (1536, 30, 12, 512)
    objective = chosen.sampler.build_objective()
    assert (objective.shift, objective.num_sampling_steps, objective.time_scale) == (3.0, 50, 1000.0)
    assert chosen.sampler.guidance_scale == 5.0 and chosen.sampler.negative_prompt.startswith("色调艳丽")


def test_from_diffusers_wan_loads_a_pipeline_folder(tmp_path, assert_close_scaled):
    saved = _random(WanTransformer3DModel(**TINY))
    saved.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    model = from_diffusers_wan(str(tmp_path), text_length=TEXT_LENGTH)
    assert isinstance(model, WanBackbone)
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(model.transformer.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_diffusers_wan(str(tmp_path / "transformer" / "missing"))


def test_from_diffusers_wan_reports_missing_and_unexpected_keys(tmp_path):
    """diffusers' loader only warns and initialises a missing weight at random: the loader refuses."""
    from safetensors.torch import load_file, save_file

    WanTransformer3DModel(**TINY).save_pretrained(tmp_path, safe_serialization=True)
    (weights,) = tmp_path.glob("*.safetensors")
    sd = load_file(weights)
    sd.pop("proj_out.weight")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing_keys \['proj_out.weight'\].*unexpected_keys \['extra.weight'\]"):
        from_diffusers_wan(str(tmp_path))


def test_trains_and_samples_in_the_module(train_and_sample):
    """The tiny Wan inside lvdm's LatentDiffusionModule trains one step and samples with guidance."""
    torch.manual_seed(0)
    denoiser = build_wan(**{**TINY, "in_channels": 3, "out_channels": 3, "text_dim": 16}, text_length=6)
    train_and_sample(denoiser, denoiser.transformer.proj_out.weight)


def test_flop_model_at_480p_81_frames_on_meta():
    """Wan 2.1 1.3B at 832×480 × 81 frames (latent 21 × 60 × 104, 32,760 tokens, 512 caption
    tokens): the FLOP model equals torch's FlopCounterMode on meta (283.0 TFLOPs per forward)."""
    from lvdm.perf.step_flops import meta_forward_flops

    with torch.device("meta"):
        model = from_name("wan2.1-t2v-1.3b").build()
    counted = meta_forward_flops(model, (16, 21, 60, 104), text_len=512, context_dim=4096)
    assert sum(model.forward_flops((21, 60, 104), 512).values()) == counted == 283_001_787_777_024
