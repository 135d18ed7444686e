"""Bad configuration fails at construction with a message naming the key and the rule, and the
CLI prints that message alone (no 100-line double traceback)."""

import subprocess
import sys
from pathlib import Path

import pytest

from lvdm.training.module import LatentDiffusionModule
from lvdm.models.dit import DiT
from lvdm.text.words import WordTextEncoder

ROOT = Path(__file__).resolve().parents[1]
GOOD = dict(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=2, num_heads=2, conditioning="cross_attn",
            context_dim=16)


@pytest.mark.parametrize("change,message", [
    ({"depth": 0}, "DiT.depth must be > 0, got 0"),
    ({"hidden_size": -8}, "DiT.hidden_size must be > 0, got -8"),
    ({"num_heads": 0}, "DiT.num_heads must be > 0"),
    ({"in_channels": 0}, "DiT.in_channels must be > 0"),
    ({"mlp_ratio": 0.0}, "DiT.mlp_ratio must be > 0"),
    ({"num_heads": 3}, "DiT.num_heads (3) must divide DiT.hidden_size (32)"),
    ({"patch_size": (2, 0, 4)}, "DiT.patch_size must be 3 positive sizes"),
    ({"context_dim": -1}, "DiT.context_dim and DiT.num_classes must be >= 0"),
])
def test_dit_rules(change, message):
    with pytest.raises(ValueError) as err:
        DiT(**{**GOOD, **change})
    assert message in str(err.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"dim": 0}, "WordTextEncoder.dim must be >= 1"),
    ({"max_length": 0}, "WordTextEncoder.max_length must be >= 1"),
])
def test_text_encoder_rules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WordTextEncoder(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"sample_shape": (8, 30, 32)}, r"sample_shape \[8, 30, 32\] gives a latent grid .* \[8, 30, 32\] that the denoiser's patch_size \[2, 4, 4\] does not divide"),
    ({"sample_shape": (8, 0, 32)}, r"sample_shape must be 3 positive sizes"),
    ({"sample_shape": (8, 32)}, r"sample_shape must be 3 positive sizes"),
    ({"caption_dropout": 1.5}, r"caption_dropout must be in \[0, 1\]"),
    ({"text_dim": 8}, r"denoiser.context_dim \(16\) must equal text_encoder.dim \(8\)"),
])
def test_module_rules(kwargs, message):
    text = WordTextEncoder(dim=kwargs.pop("text_dim", 16))
    with pytest.raises(ValueError, match=message):
        LatentDiffusionModule(DiT(**GOOD), text, **kwargs)


def test_cli_prints_the_rule_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lvdm.cli", "fit", "--config", "recipes/tiny/adaln.yaml",
                           "--model.init_args.denoiser.init_args.depth", "0",
                           "--trainer.default_root_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "lvdm fit: ValueError: DiT.depth must be > 0, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr and "Given value" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) < 8, proc.stderr


@pytest.mark.parametrize("kwargs,message", [
    ({"guidance_scale": -3.0}, r"LatentDiffusionModule.guidance_scale must be >= 0 .*got -3.0"),
    ({"guidance_scale": float("nan")}, r"guidance_scale must be >= 0"),
])
def test_module_refuses_a_negative_guidance_scale(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatentDiffusionModule(DiT(**GOOD), WordTextEncoder(dim=16), **kwargs)


def test_guidance_scale_zero_and_one_are_valid_and_generate_checks_its_argument():
    module = LatentDiffusionModule(DiT(**GOOD), WordTextEncoder(dim=16), guidance_scale=0.0, sample_shape=(2, 8, 8))
    assert module.guidance_scale == 0.0
    with pytest.raises(ValueError, match=r"guidance_scale must be >= 0 .*got -1.0"):
        module.generate(["a"], num_frames=2, num_steps=1, guidance_scale=-1.0)
    with pytest.raises(ValueError, match=r"num_steps must be >= 1 .*got 0"):
        module.generate(["a"], num_frames=2, num_steps=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"shift": -1.0}, r"RectifiedFlow.shift must be > 0 \(1: no shift\), got -1.0"),
    ({"shift": 0.0}, r"RectifiedFlow.shift must be > 0"),
    ({"num_sampling_steps": 0}, r"RectifiedFlow.num_sampling_steps must be >= 1, got 0"),
    ({"logit_std": 0.0}, r"RectifiedFlow.logit_std must be > 0"),
    ({"min_t": 1.0}, r"RectifiedFlow.min_t must be in \[0, 1\)"),
    ({"base_area": 0}, r"RectifiedFlow.base_area must be >= 1 \(or None\), got 0"),
])
def test_rectified_flow_rules(kwargs, message):
    from lvdm.diffusion.objectives import RectifiedFlow

    with pytest.raises(ValueError, match=message):
        RectifiedFlow(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_sampling_steps": 0}, r"DDPM.num_sampling_steps must be in \[1, num_train_timesteps=1000\], got 0"),
    ({"num_train_timesteps": 10, "num_sampling_steps": 20}, r"DDPM.num_sampling_steps must be in \[1, num_train_timesteps=10\]"),
    ({"beta_end": 0.00001}, r"DDPM.beta_end must be in \[beta_start=0.0001, 1\)"),
])
def test_ddpm_rules(kwargs, message):
    from lvdm.diffusion.objectives import DDPM

    with pytest.raises(ValueError, match=message):
        DDPM(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"resolution": -32}, r"VideoDataModule.resolution must be a positive int or \(height, width\), got -32"),
    ({"resolution": (32, 0)}, r"VideoDataModule.resolution must be .*got \(32, 0\)"),
    ({"shuffle_buffer": -5}, r"VideoDataModule.shuffle_buffer must be >= 0 .*got -5"),
    ({"samples_per_epoch": 0}, r"VideoDataModule.samples_per_epoch must be >= 1, got 0"),
    ({"batch_size": 0}, r"VideoDataModule.batch_size must be >= 1, got 0"),
    ({"num_frames": 0}, r"VideoDataModule.num_frames and frame_interval must be >= 1"),
])
def test_video_data_module_rules(kwargs, message):
    from lvdm.data.datamodule import VideoDataModule

    with pytest.raises(ValueError, match=message):
        VideoDataModule("shards", **kwargs)


def test_latent_data_module_refuses_a_negative_shuffle_buffer():
    from lvdm.data.datamodule import LatentDataModule

    with pytest.raises(ValueError, match=r"LatentDataModule.shuffle_buffer must be >= 0"):
        LatentDataModule("shards", shuffle_buffer=-1)


def test_cli_refuses_a_negative_resolution_before_the_model_summary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lvdm.cli", "fit", "--config", "recipes/tiny/adaln.yaml",
                           "--data.init_args.resolution", "-32", "--trainer.default_root_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "lvdm fit: ValueError: VideoDataModule.resolution must be a positive int or (height, width), got -32" in proc.stderr
    assert "Traceback" not in proc.stderr and "Params" not in proc.stdout  # no model summary
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("Seed set to")]
    assert len(lines) <= 2, proc.stderr
