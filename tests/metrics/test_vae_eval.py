import json

import pytest
import torch

from lvdm.autoencoders import CausalVAE3D
from lvdm.cli import main
from lvdm.compressors.autoencoder import AutoencoderCompressor
from lvdm.compressors.pixels import PixelCompressor
from lvdm.shapes.synthetic import write_synthetic_dataset
from lvdm.metrics.evaluate import iter_videos
from lvdm.metrics.vae_eval import evaluate_vae


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_eval")
    write_synthetic_dataset(str(root), num_train=1, num_val=3, num_frames=9, size=32)
    return str(root / "val-*.tar")


def test_psnr_ssim_fvd_of_a_random_vae_match_a_hand_computation(shards, tmp_path):
    torch.manual_seed(0)
    vae = CausalVAE3D(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1), num_res_blocks=1, patch_size=2,
                      time_downsample=4, spatial_downsample=4).eval()
    comp = AutoencoderCompressor.from_autoencoder(vae, scale_factor=0.5, shift_factor=0.1)
    result = evaluate_vae(shards, compressor=comp, num_videos=3, batch_size=2, fvd=True, device="cpu",
                          output=str(tmp_path / "r.json"))
    real = torch.stack([v for _, v, _ in iter_videos(shards, 9, 3)])
    with torch.no_grad():
        fake = vae.decode(vae.encode(real)).clamp(-1, 1)  # normalisation must cancel out
    mse = ((fake - real) / 2).square().flatten(1).mean(1)
    assert result["psnr"] == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), rel=1e-4)
    assert 0 < result["ssim"] < 1 and result["fvd"] > 0
    assert result["num_videos"] == 3 and result["compressor"].endswith("AutoencoderCompressor")
    assert json.loads((tmp_path / "r.json").read_text())["psnr"] == result["psnr"]


def test_identity_is_perfect_and_cli_runs(shards, tmp_path, capsys):
    main(["eval", "vae", "--videos", shards, "--compressor.class_path", "lvdm.compressors.pixels.PixelCompressor",
          "--num_videos", "2", "--fvd", "false", "--device", "cpu", "--output", str(tmp_path / "p.json")])
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["psnr"] == float("inf") and result["ssim"] == pytest.approx(1.0)


def test_errors_are_clear(shards):
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        evaluate_vae(shards)
    comp = AutoencoderCompressor.from_autoencoder(CausalVAE3D(base_channels=8, channel_mult=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"num_frames=8 is not valid .*1 \+ 4k"):
        evaluate_vae(shards, compressor=comp, num_frames=8, fvd=False)
    with pytest.raises(ValueError, match="needs >= 9 frames"):
        evaluate_vae(shards, compressor=PixelCompressor(), num_frames=8)
