import pytest
import torch
from diffusers import AutoencoderKL

from lvdm.compressors import FrameVAECompressor


def tiny_vae(**config) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        **config,
    ).eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    tiny_vae(scaling_factor=0.5).save_pretrained(path)
    return path


def test_loads_saved_vae_and_matches_diffusers_per_frame(vae_dir):
    comp = FrameVAECompressor(pretrained=str(vae_dir), micro_batch=16)
    reference = AutoencoderKL.from_pretrained(vae_dir).eval()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1

    raw = comp.encode_raw(video)
    assert raw.shape == (2, 4, 5, 8, 8)
    assert comp.latent_shape(5, 16, 16) == (4, 5, 8, 8)
    with torch.no_grad():
        for b in range(2):
            for t in range(5):
                expected = reference.encode(video[b, :, t][None]).latent_dist.mode()[0]
                torch.testing.assert_close(raw[b, :, t], expected, rtol=1e-4, atol=1e-5)

    one_by_one = FrameVAECompressor(pretrained=str(vae_dir), micro_batch=1)
    torch.testing.assert_close(one_by_one.encode_raw(video), raw, rtol=1e-4, atol=1e-5)


def test_scale_shift_and_decode_shapes(vae_dir):
    comp = FrameVAECompressor(pretrained=str(vae_dir), micro_batch=3)
    assert (comp.scale_factor, comp.shift_factor, comp.spatial_downsample) == (0.5, 0.0, 2)
    shifted = FrameVAECompressor(pretrained=str(vae_dir), scale_factor=2.0, shift_factor=0.25)
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    raw = comp.encode_raw(video)
    torch.testing.assert_close(comp.encode(video), raw * 0.5)
    torch.testing.assert_close(shifted.encode(video), (raw - 0.25) * 2.0)
    torch.testing.assert_close(shifted.normalize(raw), (raw - 0.25) * 2.0)

    z = comp.encode(video)
    decoded = comp.decode(z)
    assert decoded.shape == video.shape
    torch.testing.assert_close(decoded, comp.decode_raw(z / 0.5))
    torch.testing.assert_close(shifted.decode(shifted.encode(video)), decoded, rtol=1e-4, atol=1e-5)


def test_shift_factor_from_config(tmp_path):
    tiny_vae(scaling_factor=1.5, shift_factor=0.1).save_pretrained(tmp_path)
    comp = FrameVAECompressor(pretrained=str(tmp_path))
    assert (comp.scale_factor, comp.shift_factor) == (1.5, pytest.approx(0.1))


def test_frozen_and_eval(vae_dir):
    comp = FrameVAECompressor(pretrained=str(vae_dir))
    assert not any(p.requires_grad for p in comp.parameters())
    comp.train()
    assert not comp.training and not comp.vae.training
    assert not comp.encode(torch.zeros(1, 3, 1, 16, 16, requires_grad=True)).requires_grad


def test_from_vae_wraps_instance():
    vae = tiny_vae()
    comp = FrameVAECompressor.from_vae(vae, micro_batch=2)
    assert comp.vae is vae and not any(p.requires_grad for p in vae.parameters())
    assert comp.encode(torch.zeros(1, 3, 3, 8, 8)).shape == (1, 4, 3, 4, 4)


def test_missing_path_error_names_path(tmp_path, vae_dir):
    missing = tmp_path / "no_such_vae"
    with pytest.raises(FileNotFoundError, match="no_such_vae"):
        FrameVAECompressor(pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match="decoder_only"):
        FrameVAECompressor(pretrained=str(vae_dir), subfolder="decoder_only")


def test_latent_shape_rejects_indivisible_size(vae_dir):
    comp = FrameVAECompressor(pretrained=str(vae_dir))
    with pytest.raises(ValueError, match="height=15"):
        comp.latent_shape(4, 15, 16)
