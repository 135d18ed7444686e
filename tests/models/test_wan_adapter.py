"""diffusers' WanTransformer3DModel through lvdm's backbone contract (lvdm.models.diffusers_adapter):
the adapter's output equals the bare diffusers model's fed as Wan's pipeline feeds it, the
Wan 2.1 T2V 1.3B preset's size on meta, and the diffusers-folder loader."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from lvdm.models.diffusers_adapter import WanBackbone, WanExperts, build_wan
from lvdm.models.presets import from_diffusers_wan, from_diffusers_wan_experts, from_name

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=8, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
TEXT_LENGTH = 7


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
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


#: Wan 2.1 I2V's shape, tiny: 4 mask + 4 latent condition channels after the 4 noisy ones, CLIP tokens of 6
I2V = dict(TINY, in_channels=12, image_dim=6, added_kv_proj_dim=24)


def _pipeline_condition(first_frame_latents: torch.Tensor, frames: int) -> torch.Tensor:
    """What WanImageToVideoPipeline.prepare_latents builds (VAE temporal factor 4): the mask of the
    given first pixel frame over the 4·(T−1)+1 frames, folded 4 per latent frame, then the latents of
    the first frame followed by zero frames' (here: zeros, as the test's VAE stand-in)."""
    b, c, _, h, w = first_frame_latents.shape
    mask = torch.ones(b, 1, 4 * (frames - 1) + 1, h, w)
    mask[:, :, 1:] = 0
    mask = torch.cat([mask[:, :, :1].repeat_interleave(4, dim=2), mask[:, :, 1:]], dim=2)
    mask = mask.view(b, -1, 4, h, w).transpose(1, 2)  # [B, 4, T, h, w]
    latents = torch.cat([first_frame_latents, first_frame_latents.new_zeros(b, c, frames - 1, h, w)], 2)
    return torch.cat([mask, latents], 1)


@pytest.mark.parametrize("frames", [1, 5])
def test_image_to_video_equals_bare_model_fed_as_the_pipeline(frames, assert_close_scaled):
    """Wan 2.1 I2V: the 36-channel input (noisy latents, mask, first-frame latents) and CLIP's image
    tokens through the adapter's micro-conditions equal the bare model fed as WanImageToVideoPipeline
    feeds it (caption zero-padded to 512, where diffusers' attention cuts the image tokens off)."""
    bare = _random(WanTransformer3DModel(**I2V))
    model = WanBackbone(_random(WanTransformer3DModel(**I2V)), text_length=512, image_length=3).eval()
    assert (model.in_channels, model.micro_conditions) == (4, ("image_condition", "image_embeds"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, 6, 10, generator=g)
    condition = _pipeline_condition(torch.randn(2, 4, 1, 6, 10, generator=g), frames)
    image = torch.randn(2, 3, 6, generator=g)
    t = torch.tensor([999.0, 250.0])
    context = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        reference = bare(torch.cat([x, condition], 1), t, _pipeline_caption(context, [3, 5], 512),
                         encoder_hidden_states_image=image, return_dict=False)[0]
        out = model(x, t, context, mask, image_condition=condition, image_embeds=image)
        without_image = model(x, t, context, mask, image_condition=condition)
    assert reference.abs().max() > 1e-2, "the reference is ~0: the test could not fail"
    assert_close_scaled(out, reference)
    assert (without_image - out).abs().max() > 1e-3 * out.abs().max(), "the image tokens change nothing"


def test_image_to_video_errors_are_one_clear_line():
    with torch.device("meta"):
        i2v = WanTransformer3DModel(**I2V)
        t2v = WanTransformer3DModel(**TINY)
        flf2v = WanTransformer3DModel(**I2V, pos_embed_seq_len=6)
    with pytest.raises(ValueError, match="text_length=512, got 7"):
        WanBackbone(i2v, text_length=TEXT_LENGTH)
    with pytest.raises(ValueError, match="pos_embed_seq_len=6"):
        WanBackbone(flf2v)
    model, x, context = build_wan(**I2V, image_length=3), torch.randn(1, 4, 1, 4, 4), torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match=r"image_condition must be \[B, C, T, H, W\] = \[1, 8, 1, 4, 4\]"):
        model(x, torch.tensor([1.0]), context, image_condition=torch.zeros(1, 4, 1, 4, 4))
    with pytest.raises(ValueError, match=r"image_embeds must be \[B, L, image_dim\] = \[1, L, 6\]"):
        model(x, torch.tensor([1.0]), context, image_embeds=torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="takes no image_embeds"):
        WanBackbone(t2v, TEXT_LENGTH)(x, torch.tensor([1.0]), context, image_embeds=torch.zeros(1, 3, 6))


def _record_calls(model: torch.nn.Module, calls: list):
    """Keep (expert, inputs, output) of every call the pipeline makes (until the handle is removed)."""
    def hook(module, args, kwargs, output):
        calls.append((module, kwargs["hidden_states"], kwargs["timestep"], kwargs["encoder_hidden_states"], output[0]))

    return model.register_forward_hook(hook, with_kwargs=True)


def test_experts_route_each_sample_as_wan_pipeline_switches(assert_close_scaled):
    """Wan 2.2 A14B: diffusers' WanPipeline (boundary_ratio 0.875, shift 12, guidance 4 / 3) calls
    ``transformer`` at t ≥ 875 and ``transformer_2`` below; WanExperts given each call's inputs returns
    that call's output, and a batch mixing both sides routes each sample to its own expert."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    high, low = _random(WanTransformer3DModel(**TINY)), _random(WanTransformer3DModel(**TINY), seed=1)
    pipe = WanPipeline(None, None, None, FlowMatchEulerDiscreteScheduler(shift=12.0), high, low, boundary_ratio=0.875)
    calls: list = []
    handles = [_record_calls(high, calls), _record_calls(low, calls)]
    g = torch.Generator().manual_seed(2)
    caption = _pipeline_caption(torch.randn(1, 5, 8, generator=g), [3], TEXT_LENGTH)
    with torch.no_grad():
        pipe(prompt_embeds=caption, negative_prompt_embeds=torch.zeros_like(caption), height=48, width=80,
             num_frames=5, num_inference_steps=8, guidance_scale=4.0, guidance_scale_2=3.0, output_type="latent",
             generator=g)
        for handle in handles:
            handle.remove()
        experts = WanExperts(WanBackbone(high, TEXT_LENGTH), WanBackbone(low, TEXT_LENGTH), 0.875).eval()
        assert {c[0] for c in calls} == {high, low}, "the schedule did not cross the boundary"
        for _, x, t, text, output in calls:
            assert_close_scaled(experts(x, t, text), output)
        (_, x1, t1, text1, out1), (_, x2, t2, text2, out2) = calls[0], calls[-1]  # the first high, the last low
        mixed = experts(torch.cat([x1, x2]), torch.cat([t1, t2]), torch.cat([text1, text2]))
    assert calls[0][0] is high and calls[-1][0] is low and not torch.allclose(out1, out2)
    assert_close_scaled(mixed, torch.cat([out1, out2]))


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


def test_wan_14b_and_2_2_presets_on_meta():
    """Wan 2.1 14B (generate.py: 50 steps, shift 5), its I2V at 480p (40 steps, shift 3) and Wan 2.2 T2V
    A14B (wan_t2v_A14B.py: two 14B experts, boundary 0.875, 40 steps, shift 12, high-noise guidance 4)."""
    with torch.device("meta"):
        t2v, i2v, experts = (from_name(n).build() for n in ("wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.2-t2v-a14b"))
    assert (t2v.hidden_size, len(t2v.blocks), t2v.num_heads) == (5120, 40, 40)
    assert (i2v.in_channels, i2v.image_condition_channels, i2v.image_dim, i2v.image_length) == (16, 20, 1280, 257)
    assert isinstance(experts, WanExperts) and experts.boundary == 875.0 and len(experts.low.blocks) == 40
    steps_shift = [(o.num_sampling_steps, o.shift) for o in (from_name(n).sampler.build_objective() for n in
                                                              ("wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.2-t2v-a14b"))]
    assert steps_shift == [(50, 5.0), (40, 3.0), (40, 12.0)]


def test_from_diffusers_wan_experts_loads_both_transformers(tmp_path, assert_close_scaled):
    import json

    for seed, sub in enumerate(("transformer", "transformer_2")):
        _random(WanTransformer3DModel(**TINY), seed).save_pretrained(tmp_path / sub, safe_serialization=True)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        from_diffusers_wan_experts(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "boundary_ratio": 0.9}))
    experts = from_diffusers_wan_experts(str(tmp_path), text_length=TEXT_LENGTH)
    assert experts.boundary == 900.0
    high = _random(WanTransformer3DModel(**TINY), 0).state_dict()
    for name, tensor in high.items():
        torch.testing.assert_close(experts.high.transformer.state_dict()[name], tensor, rtol=0, atol=0)


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
