"""diffusers' 3D video VAEs through VideoVAECompressor: tiny random instances of every supported
class are saved with save_pretrained and loaded back through the real loader."""

import json

import diffusers
import pytest
import torch

from lvdm.compressors.video_vae import VIDEO_VAE_CLASSES, VideoVAECompressor

# name: (config, expected (time, space) factors, latent channels)
TINY = {
    "AutoencoderKLCogVideoX": (dict(block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1,
                                    norm_num_groups=4, temporal_compression_ratio=4), (4, 8), 4),
    "AutoencoderKLWan": (dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                              latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.0, 0.5, 1.5]), (4, 8), 4),
    "AutoencoderKLLTXVideo": (dict(latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                   layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                                   spatio_temporal_scaling=(True, True, False, False),
                                   decoder_spatio_temporal_scaling=(True, True, False, False),
                                   decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                   upsample_factor=(1,) * 4, patch_size=2, patch_size_t=1), (4, 8), 4),
    "AutoencoderKLHunyuanVideo": (dict(latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                                       norm_num_groups=4, mid_block_add_attention=False), (4, 8), 4),
    "AutoencoderKLMochi": (dict(encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
                                layers_per_block=(1, 1, 1, 1, 1), add_attention_block=(False,) * 5), (6, 8), 12),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny VAE saved to its own folder (built once for the module)."""
    root = tmp_path_factory.mktemp("video_vaes")
    paths = {}
    for name, (config, _, _) in TINY.items():
        torch.manual_seed(0)
        vae = getattr(diffusers, name)(**config)
        if name == "AutoencoderKLLTXVideo":  # its normalisation lives in buffers
            vae.latents_mean.copy_(torch.tensor([0.5, 0.0, -0.5, 1.0]))
            vae.latents_std.copy_(torch.tensor([2.0, 1.0, 1.0, 4.0]))
        vae.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def test_every_listed_class_has_a_tiny_test_instance():
    assert set(TINY) == set(VIDEO_VAE_CLASSES)


@pytest.mark.parametrize("name", sorted(TINY))
def test_load_factors_round_trip_and_frame_errors(saved, name):
    config, (ft, fs), channels = TINY[name]
    comp = VideoVAECompressor(str(saved[name]))
    assert type(comp.vae).__name__ == name
    assert (comp.time_downsample, comp.spatial_downsample, comp.latent_channels, comp.causal_time) == (ft, fs, channels, True)
    assert not any(p.requires_grad for p in comp.parameters())
    step = 2 if name == "AutoencoderKLCogVideoX" else 1  # CogVideoX: 1 + 8j frames
    frames = 1 + ft * step
    video = torch.rand(1, 3, frames, 16, 16) * 2 - 1
    z = comp.encode(video)
    assert z.shape == (1, channels, 1 + step, 2, 2) == (1, *comp.latent_shape(frames, 16, 16))
    assert comp.decode(z).shape == video.shape
    assert comp.num_frames(z.shape[2]) == frames
    image = torch.rand(1, 3, 1, 16, 16) * 2 - 1  # an image is a one-frame video
    assert comp.decode(comp.encode(image)).shape == image.shape
    with pytest.raises(ValueError, match=rf"num_frames={ft} is not valid .*1 \+ {ft * step}k"):
        comp.encode(torch.zeros(1, 3, ft, 16, 16))
    if step == 2:
        with pytest.raises(ValueError, match="cannot decode 2 latent frames"):
            comp.decode(torch.zeros(1, channels, 2, 2, 2))
    with pytest.raises(ValueError, match="height=12 is not a multiple"):
        comp.latent_shape(frames, 12, 16)


def test_normalisation_follows_each_model(saved):
    wan = VideoVAECompressor(str(saved["AutoencoderKLWan"]))
    assert wan.shift_factor == [0.1, -0.2, 0.3, 0.0]
    assert wan.scale_factor == pytest.approx([0.5, 1.0, 2.0, 1 / 1.5])
    raw = torch.randn(2, 4, 2, 3, 3)
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([2.0, 1.0, 0.5, 1.5]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(wan.normalize(raw), (raw - mean) / std)  # Wan pipeline's rule
    torch.testing.assert_close(wan.denormalize(wan.normalize(raw)), raw)
    ltx = VideoVAECompressor(str(saved["AutoencoderKLLTXVideo"]))  # buffers saved and reloaded
    assert ltx.shift_factor == [0.5, 0.0, -0.5, 1.0] and ltx.scale_factor == [0.5, 1.0, 1.0, 0.25]
    mochi = VideoVAECompressor(str(saved["AutoencoderKLMochi"]))
    cfg = mochi.vae.config
    assert mochi.scale_factor == pytest.approx([cfg.scaling_factor / s for s in cfg.latents_std])
    cog = VideoVAECompressor(str(saved["AutoencoderKLCogVideoX"]))
    assert (cog.scale_factor, cog.shift_factor) == (pytest.approx(1.15258426), 0.0)
    hunyuan = VideoVAECompressor(str(saved["AutoencoderKLHunyuanVideo"]), scale_factor=0.5)
    assert hunyuan.scale_factor == 0.5


def test_tiled_decoding_agrees_with_whole_frame_decoding(saved):
    """Wan's overlapping tiles blended at the seams. A tile that covers the frame decodes
    exactly as the whole frame; smaller tiles cut the decoder's receptive field at tile edges,
    so they differ, and the more they overlap the less: on this random tiny VAE (96x96 frames,
    latent 12x12) the mean |difference| is below 0.25 of the output's standard deviation with
    64-pixel tiles at stride 32 (measured 0.18), and larger than that at stride 48."""
    whole = VideoVAECompressor(str(saved["AutoencoderKLWan"]))

    def tiled(size, stride):
        return VideoVAECompressor(str(saved["AutoencoderKLWan"]), tiling=True, tiling_options={
            "tile_sample_min_height": size, "tile_sample_min_width": size,
            "tile_sample_stride_height": stride, "tile_sample_stride_width": stride})

    torch.manual_seed(0)
    z = torch.randn(1, 4, 2, 12, 12) * 0.5
    a = whole.decode(z)
    torch.testing.assert_close(tiled(96, 96).decode(z), a)
    close, far = (tiled(64, stride).decode(z) for stride in (32, 48))
    assert close.shape == a.shape == (1, 3, 5, 96, 96)
    err_close, err_far = (a - close).abs().mean(), (a - far).abs().mean()
    assert 0 < err_close < 0.25 * a.std(), (err_close, a.std())
    assert err_close < err_far


def test_refuses_other_classes_and_missing_paths(tmp_path):
    folder = tmp_path / "sdvae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="names class 'AutoencoderKL'.*FrameVAECompressor"):
        VideoVAECompressor(str(folder))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoVAECompressor(str(tmp_path / "missing"))
