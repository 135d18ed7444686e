"""Image-to-video and continuation through LatentDiffusionModule, for the pixel compressor, a
2D VAE per frame and lvdm's causal 3D VAE (1 + 2k frames → 1 + k latent frames here); masked
training steps."""

import pytest
import torch
from diffusers import AutoencoderKL

from lvdm.autoencoders import CausalVAE3D
from lvdm.compressors import FrameVAECompressor
from lvdm.compressors.autoencoder import AutoencoderCompressor
from lvdm.diffusion.masking import FrameMasks
from lvdm.diffusion.objectives import DDPM, RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                  layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
                  scaling_factor=0.5).save_pretrained(path)
    return path


def make_module(compressor=None, objective=None, **kw):
    torch.manual_seed(0)
    channels = compressor.latent_channels if compressor is not None else 3
    dit = DiT(in_channels=channels, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2,
              conditioning="cross_attn", context_dim=16, layout="spatial_temporal")
    with torch.no_grad():  # off the zero init: the model must produce something that is not the input
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8), objective or RectifiedFlow(num_sampling_steps=3),
                                   compressor, sample_shape=(5 if getattr(compressor, "causal_time", False) else 4, 16, 16),
                                   **kw)
    return module.eval()


def compressors(vae_dir):
    torch.manual_seed(0)
    causal = CausalVAE3D(latent_channels=4, base_channels=8, channel_mult=(1, 1), num_res_blocks=1,
                         time_downsample=2, spatial_downsample=2)
    return {"pixels": None, "frame_vae": FrameVAECompressor(pretrained=str(vae_dir)),
            "causal_vae": AutoencoderCompressor.from_autoencoder(causal)}


KINDS = ["pixels", "frame_vae", "causal_vae"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("objective", [RectifiedFlow(num_sampling_steps=3), DDPM(num_sampling_steps=3)], ids=["flow", "ddpm"])
def test_image_to_video_keeps_frame_zero_after_the_round_trip(kind, objective, vae_dir):
    """Frame 0 equals the image after the compressor's round trip: for the causal VAE because
    the image is its own first latent frame and the decoder's frame 0 reads only that one."""
    module = make_module(compressors(vae_dir)[kind], objective)
    frames = 5 if kind == "causal_vae" else 4
    image = torch.rand(2, 3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    video = module.generate(["a red square", "a blue circle"], num_frames=frames, first_frames=image, seed=5)
    assert video.shape == (2, 3, frames, 16, 16)
    round_trip = module.compressor.decode(module.compressor.encode(image)).clamp(-1, 1)
    torch.testing.assert_close(video[:, :, :1], round_trip, rtol=1e-5, atol=1e-5)
    if kind == "pixels":
        torch.testing.assert_close(video[:, :, :1], image)
    assert not torch.allclose(video[:, :, 1], video[:, :, 0], atol=1e-3), "later frames are generated, not copied"
    # without the image the first frame is generated
    free = module.generate(["a red square", "a blue circle"], num_frames=frames, seed=5)
    assert not torch.allclose(free[:, :, :1], round_trip, atol=1e-2)


def test_loop_ends_on_the_image():
    module = make_module()
    image = torch.rand(2, 3, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    video = module.generate(["a red square", "a blue circle"], num_frames=4, first_frames=image, loop=True)
    torch.testing.assert_close(video[:, :, :1], image)
    torch.testing.assert_close(video[:, :, -1:], image)
    assert not torch.allclose(video[:, :, 1], image[:, :, 0], atol=1e-3)
    with pytest.raises(ValueError, match="loop=True needs first_frames"):
        module.generate(["a"], loop=True)


@pytest.mark.parametrize("kind", KINDS)
def test_extend_keeps_the_given_frames(kind, vae_dir):
    module = make_module(compressors(vae_dir)[kind])
    start = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    # windows of 4 frames given the last 2 (the causal VAE: 5 frames given the last 3, 1 + 2k each)
    window, context = (5, 3) if kind == "causal_vae" else (4, 2)
    out = module.extend(start, ["a red square"], num_new_frames=5, context_frames=context, num_frames=window)
    assert out.shape == (1, 3, 8, 16, 16)
    assert torch.equal(out[:, :, :3], start), "continuation returns the given frames untouched"
    assert out.abs().max() <= 1


def test_bad_conditioning_inputs_have_clear_errors():
    module = make_module()
    with pytest.raises(ValueError, match="nothing is left to generate"):
        module.generate(["a"], num_frames=4, first_frames=torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\[2 prompts, 3, frames, H, W\]"):
        module.generate(["a", "b"], first_frames=torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match="context_frames"):
        module.extend(torch.zeros(1, 3, 2, 16, 16), ["a"], 2, context_frames=4, num_frames=4)


def test_masked_training_step_uses_the_policy_and_only_generated_frames():
    module = make_module(frame_masks=FrameMasks(image_to_video=1.0)).train()
    batch = {"video": torch.rand(2, 3, 4, 16, 16) * 2 - 1, "caption": ["a red square", "a blue circle"]}
    seen = {}
    forward = module.denoiser.forward

    def spy(x, t, **kw):
        seen["t"] = t
        return forward(x, t, **kw)

    module.denoiser.forward = spy
    torch.manual_seed(0)
    loss = module.diffusion_loss(batch)
    assert seen["t"].shape == (2, 4) and (seen["t"][:, 0] == 0).all() and (seen["t"][:, 1:] > 0).all()
    loss.backward()
    assert module.denoiser.final_layer.linear.weight.grad.abs().sum() > 0
    module.eval()  # validation is text-to-video: one timestep per sample
    module.diffusion_loss(batch)
    assert seen["t"].shape == (2,)
