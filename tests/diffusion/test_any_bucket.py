"""Every bucket through the model: a resolution- and duration-aware shift, and T = 1 (images)
through the denoiser, the compressors, guidance and sampling."""

import math

import pytest
import torch

from lvdm.compressors import FrameVAECompressor
from lvdm.compressors.pixels import PixelCompressor
from lvdm.diffusion.guidance import GuidedDenoiser
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder


def test_open_sora_shift_by_hand():
    # Open-Sora 1.2: 720p (720x1280 px -> 90x160 latents), 51 frames -> 15 latent frames,
    # base 512x512 px (64x64 latents), 1 frame: sqrt(14400 / 4096) * sqrt(15) = 1.875 * 3.873
    flow = RectifiedFlow(shift=1.0, resolution_aware=True, base_area=64 * 64, base_frames=1)
    x = torch.zeros(1, 4, 15, 90, 160)
    expected = math.sqrt(90 * 160 / 4096) * math.sqrt(15)
    assert flow.effective_shift(x) == pytest.approx(expected) == pytest.approx(7.2618, abs=1e-4)
    # an image at the base size: no shift; twice the frames: sqrt(2) more; the channels do not count
    assert flow.effective_shift(torch.zeros(1, 16, 1, 64, 64)) == pytest.approx(1.0)
    assert flow.effective_shift(torch.zeros(1, 4, 30, 90, 160)) == pytest.approx(expected * math.sqrt(2))
    # the shifted time t' = s t / (1 + (s - 1) t), at t = 0.5: s / (1 + s)
    t = flow.shift_time(torch.tensor([0.5], dtype=torch.float64), expected)
    assert t.item() == pytest.approx(expected / (1 + expected))
    grid = flow.timesteps(4, x)
    hand = [expected * u / (1 + (expected - 1) * u) for u in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert grid.tolist() == pytest.approx(hand)


def _dit(**kwargs):
    torch.manual_seed(0)
    return DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=1, num_heads=2,
               conditioning="cross_attn", context_dim=16, **kwargs)


def test_dit_takes_one_frame_as_a_repeated_temporal_patch():
    model = _dit().eval()
    ctx, mask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)
    image = torch.randn(2, 3, 1, 16, 24)
    out = model(image, torch.rand(2), ctx, mask)
    assert out.shape == image.shape
    t = torch.rand(2)
    twice = model(image.expand(-1, -1, 2, -1, -1), t, ctx, mask)
    torch.testing.assert_close(model(image, t, ctx, mask), twice[:, :, :1])
    assert model(torch.randn(1, 3, 3, 16, 16), torch.rand(1), ctx[:1], mask[:1]).shape == (1, 3, 3, 16, 16)


@pytest.mark.parametrize("compressor", ["pixels", "frame_vae"])
def test_compressors_take_one_frame(compressor, tmp_path):
    if compressor == "pixels":
        comp = PixelCompressor()
    else:
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                      norm_num_groups=4, sample_size=32).save_pretrained(tmp_path)
        comp = FrameVAECompressor(pretrained=str(tmp_path))
    image = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    latent = comp.encode(image)
    assert latent.shape == (2, *comp.latent_shape(1, 16, 16))
    assert comp.decode(latent).shape == image.shape


def test_guided_sampling_at_several_sizes_and_durations():
    text = WordTextEncoder(dim=16, max_length=4)
    module = LatentDiffusionModule(_dit(), text, objective=RectifiedFlow(
        resolution_aware=True, base_area=16 * 16, num_sampling_steps=2)).eval()
    ctx, mask = text(["a red square"])
    null, null_mask = text([""])
    guided = GuidedDenoiser(module.denoiser, ctx, mask, null, null_mask, scale=4.0)
    assert guided(torch.randn(1, 3, 1, 16, 16), torch.rand(1)).shape == (1, 3, 1, 16, 16)
    for frames, height, width in ((1, 16, 16), (1, 16, 32), (4, 32, 16), (3, 16, 16)):
        video = module.generate(["a red square"], num_frames=frames, height=height, width=width, num_steps=2)
        assert video.shape == (1, 3, frames, height, width) and video.abs().max() <= 1
