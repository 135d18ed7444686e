"""The plumbing of examples/lora_new_concept.py on a tiny random model (its accuracy is measured by
running the example: README, benchmarks/RESULTS.md)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lvdm.finetune.lora import adapter_state_dict, apply_lora
from lvdm.models.dit import DiT
from lvdm.shapes.synthetic import ALL_COMBOS, caption

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        spec = importlib.util.spec_from_file_location("lora_new_concept", ROOT / "examples/lora_new_concept.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return module


def test_new_word_has_its_own_embedding_row(example):
    old = [caption(*combo) for combo in ALL_COMBOS]
    assert example.word_row_is_new("magenta", old)
    assert not example.word_row_is_new("red", old)  # a trained word's row is not new


def test_targets_adapt_blocks_and_caption_projection_and_share_is_counted(example, tmp_path):
    torch.manual_seed(0)
    denoiser = DiT(in_channels=3, patch_size=[2, 4, 4], hidden_size=64, depth=2, num_heads=2, conditioning="adaln",
                   context_dim=16)
    base = {f"denoiser.{k}": v.clone() for k, v in denoiser.state_dict().items()}
    base["text_encoder.embedding.weight"] = torch.zeros(4096, 16)
    adapted = apply_lora(denoiser, rank=2, targets=example.TARGETS)  # a pattern matching nothing would raise
    assert {"context_proj.fc1", "context_proj.fc2", "blocks.1.mlp.fc2"} <= set(adapted)
    assert not any("adaLN" in name for name in adapted)
    torch.save({"state_dict": base}, tmp_path / "base.ckpt")
    adapter = adapter_state_dict(denoiser)
    torch.save({"state_dict": {f"denoiser.{k}": v for k, v in adapter.items()}}, tmp_path / "adapter.ckpt")
    count, total, in_denoiser = example.trainable_share(tmp_path / "adapter.ckpt", tmp_path / "base.ckpt")
    assert count == sum(v.numel() for v in adapter.values()) > 0
    assert total == in_denoiser + 4096 * 16 and in_denoiser == sum(p.numel() for p in base.values()) - 4096 * 16


@pytest.mark.parametrize("new_colour, met", [(0.95, True), (0.5, False)])
def test_report_checks_every_goal(example, tmp_path, capsys, new_colour, met):
    accuracy = {"colour": 1.0, "shape": 0.6, "direction": 1.0}
    before = {"new": {**accuracy, "colour": None}, "old": accuracy}  # None: a probe that scored nothing
    after = {"new": {**accuracy, "colour": new_colour}, "old": accuracy}
    assert example.report(before, after, (30, 1000, 900), 12.0, tmp_path) is met
    out = capsys.readouterr().out
    assert "3.00 % of the base's 1,000" in out and ("all targets met" if met else "TARGETS MISSED") in out
    assert json.loads((tmp_path / "result.json").read_text())["after"]["new"]["colour"] == new_colour
    # the trainable share is a goal too
    assert example.report(before, {**after, "new": {**accuracy, "colour": 1.0}}, (60, 1000, 900), 1.0, tmp_path) is False
    assert "limit 5 % MISSED" in capsys.readouterr().out
