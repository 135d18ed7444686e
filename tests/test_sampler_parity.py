"""Sampler parity with diffusers' pipelines: tiny random ``DiTPipeline`` and ``PixArtAlphaPipeline``
folders, saved here, sampled by diffusers and by lvdm from the same initial noise: lvdm loads the
folder's transformer and VAE and samples through ``LatentDiffusionModule.generate`` (what ``lvdm
sample`` calls); the latents each hands its VAE agree to 1e-4 (float32, same steps and guidance)."""

import sys
from pathlib import Path

import pytest
import torch

from lvdm.diffusion.objectives import DDPM

sys.path.insert(0, str(Path(__file__).parent / "models"))
from test_convert_dit_imagenet import tiny_diffusers_dit


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         layers_per_block=1, norm_num_groups=8)


def _record_latents(owner) -> list:
    """Keep the latents a diffusers pipeline or an lvdm FrameVAECompressor hands its VAE (times
    its scaling factor: the sampler's final latents)."""
    seen, decode = [], owner.vae.decode

    def recording(latents, *args, **kwargs):
        seen.append(latents * owner.vae.config.scaling_factor)
        return decode(latents, *args, **kwargs)

    owner.vae.decode = recording
    return seen


def _lvdm_module(pipe_dir, denoiser, text_encoder, objective):
    """The module ``lvdm sample`` would run: the pipeline folder's denoiser and VAE, lvdm's objective."""
    from lvdm.compressors.vae2d import FrameVAECompressor
    from lvdm.training.module import LatentDiffusionModule

    return LatentDiffusionModule(denoiser.eval(), text_encoder, objective,
                                 FrameVAECompressor(str(pipe_dir), subfolder="vae"), sample_shape=(1, 8, 8)).eval()


def _noise(shape, seeds):
    """lvdm's per-prompt noise (``generate``: prompt i from seed + i), ``[B, C, 1, H, W]``."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("betas", [(1e-4, 0.02), (1e-4, 2e-3)])
def test_dit_pipeline_parity(tmp_path, guidance, betas):
    from diffusers import DiTPipeline

    from lvdm.models.convert.dit_imagenet import load_diffusers
    from lvdm.text.words import WordTextEncoder

    objective = DDPM(sampler="ddim", num_sampling_steps=6, beta_start=betas[0], beta_end=betas[1])
    DiTPipeline(transformer=tiny_diffusers_dit(), vae=_tiny_vae(), scheduler=objective.make_sampler()).save_pretrained(
        tmp_path / "pipe")
    pipe = DiTPipeline.from_pretrained(tmp_path / "pipe")
    seen = _record_latents(pipe)
    labels, seeds = [3, 999], [10, 11]
    pipe(class_labels=labels, guidance_scale=guidance, num_inference_steps=6, output_type="pt",
         generator=[torch.Generator().manual_seed(s) for s in seeds])

    module = _lvdm_module(tmp_path / "pipe", load_diffusers(str(tmp_path / "pipe")), WordTextEncoder(dim=8), objective)
    ours = _record_latents(module.compressor)
    module.generate(["a", "b"], 1, 8, 8, num_steps=6, guidance_scale=guidance, seed=seeds[0], class_labels=labels)
    ours = ours[0]  # frames fold into the batch: [B * 1, C, H, W]
    diff = (ours - seen[0]).abs().max().item()
    print(f"DiTPipeline betas {betas} guidance {guidance}: max |lvdm - diffusers| = {diff:.3g} (latents up to "
          f"{seen[0].abs().max().item():.3g})")
    assert diff <= max(1e-4, 1e-5 * seen[0].abs().max().item())  # a random DiT under 0.02 betas: |x| ~ 200


def _tiny_pixart():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                     num_layers=2, sample_size=8, patch_size=2, caption_channels=32,
                                     cross_attention_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


PROMPTS = ["a red square moving left", "a blue circle"]


@pytest.mark.parametrize("guidance", [1.0, 4.5])
@pytest.mark.parametrize("betas", [(1e-4, 0.02), (1e-4, 2e-3)])
def test_pixart_alpha_pipeline_parity(tmp_path, guidance, betas):
    from diffusers import PixArtAlphaPipeline
    from transformers import AutoTokenizer, T5EncoderModel

    from lvdm.models.presets import from_diffusers
    from lvdm.text.t5 import T5TextEncoder
    from lvdm.text.tiny import build_tiny_t5

    t5 = build_tiny_t5(tmp_path / "t5", PROMPTS)
    objective = DDPM(sampler="dpm_solver", num_sampling_steps=5, beta_start=betas[0], beta_end=betas[1])
    PixArtAlphaPipeline(tokenizer=AutoTokenizer.from_pretrained(t5), text_encoder=T5EncoderModel.from_pretrained(t5),
                        vae=_tiny_vae(), transformer=_tiny_pixart(),
                        scheduler=objective.make_sampler()).save_pretrained(tmp_path / "pipe")
    pipe = PixArtAlphaPipeline.from_pretrained(tmp_path / "pipe")
    seeds = [20, 21]
    expected = pipe(prompt=PROMPTS, negative_prompt="", num_inference_steps=5, guidance_scale=guidance, height=8,
                    width=8, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
                    use_resolution_binning=False, clean_caption=False, max_sequence_length=12).images

    text = T5TextEncoder(str(tmp_path / "pipe"), max_length=12, tokenizer_subfolder="tokenizer",
                         encoder_subfolder="text_encoder")
    module = _lvdm_module(tmp_path / "pipe", from_diffusers(str(tmp_path / "pipe")), text, objective)
    ours = _record_latents(module.compressor)
    module.generate(PROMPTS, 1, 8, 8, num_steps=5, guidance_scale=guidance, seed=seeds[0])
    ours = ours[0]  # frames fold into the batch: [B * 1, C, H, W]
    diff = (ours - expected).abs().max().item()
    print(f"PixArtAlphaPipeline betas {betas} guidance {guidance}: max |lvdm - diffusers| = {diff:.3g} "
          f"(latents up to {expected.abs().max().item():.3g})")
    assert diff <= max(1e-4, 1e-5 * expected.abs().max().item())


def _class_checkpoint(tmp_path, tiny_hparams):
    """A tiny class-conditional DiT module (ImageNet DiT's layout on pixels) saved as a checkpoint."""
    from lvdm.checkpoints.load import build_module

    hparams = tiny_hparams(denoiser={"class_path": "lvdm.models.dit.DiT", "init_args": {
        "in_channels": 3, "out_channels": 6, "patch_size": [1, 2, 2], "hidden_size": 32, "depth": 1,
        "num_heads": 2, "num_classes": 10, "position": "sincos_2d"}}, sample_shape=[1, 8, 8])
    module = build_module(hparams)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, tmp_path / "dit.ckpt")
    return tmp_path / "dit.ckpt", module.eval()


def test_sample_class_labels_from_the_cli(tmp_path, tiny_hparams):
    from lvdm.diffusion.guidance import ClassGuidedDenoiser
    from lvdm.generation.sample import sample

    path, module = _class_checkpoint(tmp_path, tiny_hparams)
    written = sample(str(path), class_label=[3, 7], out=str(tmp_path / "out"), guidance=3.0, device="cpu")
    assert [p.rsplit("/", 1)[1] for p in written] == ["00000_class_3.mp4", "00001_class_7.mp4"]
    # generate conditions on the labels: what the objective samples with the class-guided DiT
    video = module.generate(["a", "b"], class_labels=[3, 7], guidance_scale=3.0, seed=5)
    model_fn = ClassGuidedDenoiser(module.denoiser, torch.tensor([3, 7]), 3.0)
    latents = module.objective.sample(model_fn, _noise((3, 1, 8, 8), [5, 6]))
    torch.testing.assert_close(video, module.compressor.decode(latents).clamp(-1, 1))
    with pytest.raises(ValueError, match="class label 10 is out of range: the model has classes 0..9"):
        module.generate(["a"], class_labels=[10])
    with pytest.raises(ValueError, match="give --class_label .* or prompts, not both"):
        sample(str(path), prompts=["x"], class_label=[1], out=str(tmp_path / "o2"))


def test_preset_sets_the_sources_sampler_and_learned_null_caption(tmp_path):
    from lvdm.models.presets import preset
    from lvdm.training.module import LatentDiffusionModule
    from lvdm.generation.generator import apply_preset
    from lvdm.text.words import WordTextEncoder

    torch.manual_seed(0)
    denoiser = preset("opensora-v1.2-stdit3-xl2", in_channels=3, hidden_size=32, depth=1, num_heads=2,
                      context_dim=16, context_length=4)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    module = LatentDiffusionModule(denoiser, WordTextEncoder(dim=16, max_length=4), sample_shape=(1, 8, 8)).eval()
    assert module.objective.target == "eps_minus_x0" and module.guidance_scale == 4.0
    apply_preset(module, "opensora-v1.2-stdit3-xl2")
    assert (module.objective.target, module.objective.num_sampling_steps, module.guidance_scale,
            module.null_caption, module.fps) == ("x0_minus_eps", 30, 7.0, "learned_caption", 24)
    learned = module.generate(["a cat"], num_steps=2, null_caption="learned_caption")
    empty = module.generate(["a cat"], num_steps=2, null_caption="empty_caption")
    assert not torch.equal(learned, empty)
    with pytest.raises(ValueError, match="--preset dit-xl2-256 is a DiT; the checkpoint's denoiser is a STDiT"):
        apply_preset(module, "dit-xl2-256")
