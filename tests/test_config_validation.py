"""Bad configuration fails at construction with a message naming the key and the rule, and the
CLI prints that message alone (no 100-line double traceback)."""

import subprocess
import sys
from pathlib import Path

import pytest

from lvdm.module import LatentDiffusionModule
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
