"""Sampler parity with the video pipelines of published models: tiny random diffusers ``WanPipeline``,
``HunyuanVideoPipeline`` and ``LTXPipeline`` folders, saved here with tiny text encoders and
tokenizers built offline, sampled by ``lvdm sample FOLDER --preset NAME`` and by the pipeline from
the same noise (the same per-prompt seeds); the latents lvdm hands its VAE equal the pipeline's
final latents (``output_type="latent"``) to 1e-4 (float32)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lvdm.compressors.video_vae import VideoVAECompressor
from lvdm.generation.sample import sample
from lvdm.text.llava_llama import HUNYUAN_TEMPLATE

PROMPTS = ["a red square moving left", "a blue circle on the mat"]
SEEDS = 7


def word_tokenizer(sentences, specials: list[str], template: str, **names: str) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer trained on ``sentences`` (built offline), ``template`` its single-text template."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=names["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(list(sentences), trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tokenizer.token_to_id(t)) for t in specials if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names)


def t5_tokenizer(sentences=PROMPTS) -> PreTrainedTokenizerFast:
    return word_tokenizer(sentences, ["<pad>", "</s>", "<unk>"], "$A </s>", pad_token="<pad>", eos_token="</s>",
                          unk_token="<unk>")


def randomised(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Every parameter drawn at random (zero-initialised outputs would hide differences)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def recorded_latents(monkeypatch) -> list:
    """The latents lvdm's sampler hands its video VAE (before de-normalising), in call order."""
    seen, decode = [], VideoVAECompressor.decode

    def recording(self, latents, *args, **kwargs):
        seen.append(latents.clone())
        return decode(self, latents, *args, **kwargs)

    monkeypatch.setattr(VideoVAECompressor, "decode", recording)
    return seen


def lvdm_latents(monkeypatch, folder, preset: str, out, **options) -> torch.Tensor:
    seen = recorded_latents(monkeypatch)
    sample(str(folder), prompts=PROMPTS, out=str(out), seed=SEEDS, device="cpu", preset=preset, **options)
    return torch.cat(seen)


def assert_parity(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    diff = (ours - theirs).abs().max().item()
    print(f"{what}: max |lvdm - diffusers| = {diff:.3g} (latents up to {theirs.abs().max().item():.3g})")
    assert theirs.abs().max() > 0.1, "the reference is ~0: the test could not fail"
    assert diff <= max(1e-4, 1e-5 * theirs.abs().max().item())


def generators() -> list:
    return [torch.Generator().manual_seed(SEEDS + i) for i in range(len(PROMPTS))]


# ------------------------------------------------------------------------------------------- Wan
#: Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (as diffusers' Wan docs and ports
#: quote it; the hub is not read offline).
WAN_SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                     flow_shift=3.0, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
                     final_sigmas_type="zero", timestep_spacing="linspace", steps_offset=0)


def wan_folder(root, negative: str):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = t5_tokenizer(PROMPTS + [negative])
    encoder = randomised(UMT5EncoderModel(UMT5Config(d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=16,
                                                     vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                     eos_token_id=tokenizer.eos_token_id)), std=1.0)
    transformer = randomised(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=8,
        freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32), std=0.2)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.0, 0.5, 1.5])
    WanPipeline(tokenizer=tokenizer, text_encoder=encoder, transformer=transformer, vae=vae,
                scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER)).save_pretrained(root)
    return root


def test_wan_pipeline_parity(tmp_path, monkeypatch):
    """WanPipeline (UniPC flow, shift 3, umT5 padded to 512 and zeroed past each caption, CFG 5 against
    Wan's negative prompt, non-square 32 × 48, 5 frames) vs ``lvdm sample --preset wan2.1-t2v-1.3b``."""
    from diffusers import WanPipeline

    from lvdm.models.presets import from_name

    negative = from_name("wan2.1-t2v-1.3b").sampler.negative_prompt
    folder = wan_folder(tmp_path / "wan", negative)
    pipe = WanPipeline.from_pretrained(folder)
    expected = pipe(prompt=PROMPTS, negative_prompt=negative, height=32, width=48, num_frames=5, num_inference_steps=4,
                    guidance_scale=5.0, generator=generators(), output_type="latent").frames
    ours = lvdm_latents(monkeypatch, folder, "wan2.1-t2v-1.3b", tmp_path / "out", num_frames=5, height=32, width=48,
                        steps=4)
    assert_parity(ours, expected, "WanPipeline")


# ------------------------------------------------------------------------------------ HunyuanVideo
def hunyuan_folder(root):
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from diffusers import HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    llama_tokens = word_tokenizer(PROMPTS + [HUNYUAN_TEMPLATE], ["<pad>", "<|begin_of_text|>", "<unk>"],
                                  "<|begin_of_text|> $A", pad_token="<pad>", bos_token="<|begin_of_text|>",
                                  unk_token="<unk>")
    clip_tokens = word_tokenizer(PROMPTS, ["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>"],
                                 "<|startoftext|> $A <|endoftext|>", pad_token="<pad>", bos_token="<|startoftext|>",
                                 eos_token="<|endoftext|>", unk_token="<unk>")
    llama = randomised(LlamaModel(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                              num_attention_heads=2, num_key_value_heads=2, vocab_size=len(llama_tokens),
                                              max_position_embeddings=512, pad_token_id=llama_tokens.pad_token_id)),
                       std=0.5)
    clip = randomised(CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, vocab_size=len(clip_tokens),
                                                   max_position_embeddings=77, pad_token_id=clip_tokens.pad_token_id,
                                                   bos_token_id=clip_tokens.bos_token_id,
                                                   eos_token_id=clip_tokens.eos_token_id)), std=0.5)
    transformer = randomised(HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(4, 4, 4)), std=0.1)
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                                    norm_num_groups=4, mid_block_add_attention=False)
    HunyuanVideoPipeline(text_encoder=llama, tokenizer=llama_tokens, transformer=transformer, vae=vae,
                         scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                         tokenizer_2=clip_tokens).save_pretrained(root)
    return root


def test_hunyuanvideo_pipeline_parity(tmp_path, monkeypatch):
    """HunyuanVideoPipeline (Euler, shift 7, sigmas linspace(1, 0), guidance 6 embedded and no CFG, the
    Llama prompt template cropped at 95 tokens + CLIP-L pooled, non-square 32 × 48, 5 frames) vs
    ``lvdm sample --preset hunyuanvideo``."""
    from diffusers import HunyuanVideoPipeline

    folder = hunyuan_folder(tmp_path / "hunyuan")
    pipe = HunyuanVideoPipeline.from_pretrained(folder)
    expected = pipe(prompt=PROMPTS, height=32, width=48, num_frames=5, num_inference_steps=4, guidance_scale=6.0,
                    generator=generators(), output_type="latent").frames
    ours = lvdm_latents(monkeypatch, folder, "hunyuanvideo", tmp_path / "out", num_frames=5, height=32, width=48,
                        steps=4)
    assert_parity(ours, expected, "HunyuanVideoPipeline")


# ------------------------------------------------------------------------------------------- LTX
#: Lightricks/LTX-Video scheduler/scheduler_config.json (as ports quote it; not read offline).
LTX_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                     base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)


def ltx_folder(root):
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    encoder = randomised(T5EncoderModel(T5Config(d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=16,
                                                 vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                 eos_token_id=tokenizer.eos_token_id)), std=1.0)
    transformer = randomised(LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24,
        num_layers=2, caption_channels=8), std=0.1)  # 0.2: a random gain that lifts float32 rounding to 7e-5
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, patch_size=2,
        patch_size_t=1)
    vae.latents_mean.copy_(torch.tensor([0.5, 0.0, -0.5, 1.0]))
    vae.latents_std.copy_(torch.tensor([2.0, 1.0, 1.0, 4.0]))
    LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER), vae=vae, text_encoder=encoder,
                tokenizer=tokenizer, transformer=transformer).save_pretrained(root)
    return root


def test_ltx_pipeline_parity(tmp_path, monkeypatch):
    """LTXPipeline (Euler on sigmas linspace(1, 1/N), dynamic shift exp(mu(tokens)), terminal 0.1, T5
    unmasked over 128 tokens, CFG 3 against "", frame rate 25, non-square 32 × 64, 9 frames) vs
    ``lvdm sample --preset ltx-video-2b``."""
    from diffusers import LTXPipeline

    folder = ltx_folder(tmp_path / "ltx")
    pipe = LTXPipeline.from_pretrained(folder)
    packed = pipe(prompt=PROMPTS, negative_prompt="", height=32, width=64, num_frames=9, num_inference_steps=4,
                  guidance_scale=3.0, generator=generators(), output_type="latent").frames
    expected = pipe._unpack_latents(packed, 3, 4, 8, pipe.transformer_spatial_patch_size,
                                    pipe.transformer_temporal_patch_size)
    ours = lvdm_latents(monkeypatch, folder, "ltx-video-2b", tmp_path / "out", num_frames=9, height=32, width=64,
                        steps=4)
    assert_parity(ours, expected, "LTXPipeline")


def test_pipeline_folder_needs_a_preset_that_reads_one(tmp_path, monkeypatch):
    from lvdm.generation import published
    from lvdm.generation.generator import Generator

    (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    with pytest.raises(ValueError, match="is a diffusers pipeline folder: name the published model it holds with "
                                         "--preset"):
        Generator(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match=r"--preset opensora-2.0 cannot read a diffusers pipeline folder .*"
                                         r"\['hunyuanvideo', 'ltx-video-2b', 'wan2.1-t2v-1.3b'\]"):
        Generator(str(tmp_path), device="cpu", preset="opensora-2.0")
    with pytest.raises(ValueError, match="model_index.json is a 'WanPipeline'; --preset hunyuanvideo reads a "
                                         "'HunyuanVideoPipeline' folder"):
        Generator(str(tmp_path), device="cpu", preset="hunyuanvideo")
    asked = []  # a hub id with a preset is a pipeline repository (nothing is downloaded here)
    monkeypatch.setattr(published, "module_from_pipeline", lambda *args: asked.append(args) or torch.nn.Linear(1, 1))
    Generator("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", device="cpu", preset="wan2.1-t2v-1.3b")
    assert asked == [("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan2.1-t2v-1.3b")]
