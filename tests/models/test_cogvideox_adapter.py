"""diffusers' CogVideoXTransformer3DModel through lvdm's backbone contract (lvdm.models.diffusers_adapter):
the adapter's output equals the bare diffusers model's fed as CogVideoXPipeline feeds it (sincos and
RoPE positions), the presets' sizes on meta, and the FLOP model at CogVideoX-5b's real size."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from lvdm.models.diffusers_adapter import CogVideoXBackbone, build_cogvideox
from lvdm.models.presets import from_name

#: sample 8×12 latent (4×6 patches) is the size the sincos table and the RoPE base grid are built for
TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=8, num_layers=2, sample_width=12, sample_height=8, sample_frames=17,
            max_text_seq_length=6)


def _pipeline_rope(transformer, latents: torch.Tensor):
    """CogVideoXPipeline._prepare_rotary_positional_embeddings at the pixel size of ``latents``
    (VAE factor 8), as the pipeline calls it (latent frames)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    pipe = CogVideoXPipeline(None, None, None, transformer, CogVideoXDDIMScheduler())
    _, frames, _, h, w = latents.shape
    return pipe._prepare_rotary_positional_embeddings(8 * h, 8 * w, frames, latents.device)


@pytest.mark.parametrize("frames", [1, 5])
@pytest.mark.parametrize("rope", [False, True], ids=["sincos-2b", "rope-5b"])
def test_adapter_equals_bare_model_fed_as_the_pipeline(frames, rope, assert_close_scaled, random_weights):
    """Latents frames-first, the DDPM step as the time, T5 tokens (padding included) before the video
    tokens; a non-square latent that is not the config's sample size (sincos recomputed; RoPE cropped)."""
    config = dict(TINY, use_rotary_positional_embeddings=rope)
    bare = random_weights(CogVideoXTransformer3DModel(**config))
    model = CogVideoXBackbone(random_weights(CogVideoXTransformer3DModel(**config))).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, 6, 10, generator=g)  # 3 × 5 patches
    t = torch.tensor([999, 250])
    context = torch.randn(2, 6, 8, generator=g)
    latents = x.transpose(1, 2)  # the pipeline's [B, F, C, H, W]
    with torch.no_grad():
        rotary = _pipeline_rope(bare, latents) if rope else None
        reference = bare(latents, context, t, image_rotary_emb=rotary, return_dict=False)[0].transpose(1, 2)
        out = model(x, t, context)
    assert reference.abs().max() > 1e-2, "the reference is ~0: the test could not fail"
    assert_close_scaled(out, reference)


def test_errors_are_one_clear_line():
    model = build_cogvideox(**{k: v for k, v in TINY.items() if k != "sample_frames"})
    x, context = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 6, 8)
    with pytest.raises(ValueError, match=r"per-frame timesteps \[B, T\] = \[1, 2\] are not supported"):
        model(x, torch.ones(1, 2), context)
    with pytest.raises(ValueError, match="max_text_seq_length=6 caption tokens, got 5"):
        model(x, torch.ones(1), context[:, :5])
    with torch.device("meta"):
        i2v = CogVideoXTransformer3DModel(**{**TINY, "in_channels": 8}, use_rotary_positional_embeddings=True)
    with pytest.raises(ValueError, match="image-to-video .*in_channels=8"):
        CogVideoXBackbone(i2v)


@pytest.mark.parametrize("name,heads,layers", [("cogvideox-2b", 30, 30), ("cogvideox-5b", 48, 42)])
def test_presets_on_meta(name, heads, layers):
    """diffusers' CogVideoXTransformer3DModel with the THUDM/CogVideoX-2b / -5b transformer configs."""
    chosen = from_name(name)
    with torch.device("meta"):
        model = chosen.build()
        official = CogVideoXTransformer3DModel(num_attention_heads=heads, num_layers=layers,
                                               use_rotary_positional_embeddings=heads == 48)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in official.parameters())
    objective = chosen.sampler.build_objective()
    assert (objective.prediction_type, objective.train_scheduler.config.beta_schedule) == ("v_prediction",
                                                                                         "scaled_linear")


@pytest.mark.slow  # ~6 s on meta; the battery checks the same FLOP model at a tiny size
def test_flop_model_at_720x480_49_frames_on_meta():
    """CogVideoX-5b at its 720×480 × 49 frames (latent 13 × 60 × 90, 17,550 video tokens, 226 caption
    tokens): the FLOP model equals torch's FlopCounterMode on meta."""
    from lvdm.perf.step_flops import meta_forward_flops

    with torch.device("meta"):
        model = from_name("cogvideox-5b").build()
    counted = meta_forward_flops(model, (16, 13, 60, 90), text_len=226, context_dim=4096)
    assert sum(model.forward_flops((13, 60, 90), 226).values()) == counted
    print(f"cogvideox-5b 720x480x49: {counted / 1e12:.1f} TFLOPs per forward")


def test_trains_and_samples_in_the_module(train_and_sample):
    """The tiny CogVideoX inside lvdm's LatentDiffusionModule trains one step and samples with guidance."""
    torch.manual_seed(0)
    denoiser = build_cogvideox(**{**{k: v for k, v in TINY.items() if k != "sample_frames"}, "in_channels": 3,
                                  "out_channels": 3, "text_embed_dim": 16}, use_rotary_positional_embeddings=True)
    train_and_sample(denoiser, denoiser.transformer.proj_out.weight)
