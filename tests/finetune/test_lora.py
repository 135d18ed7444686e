"""LoRA on a backbone (lvdm.finetune.lora): targets, frozen base, merge == unmerged, bad patterns."""

import pytest
import torch

from lvdm.checkpoints.load import build_module
from lvdm.finetune.lora import apply_lora, find_targets, is_adapter_key, linear_names, lora_layers, merge_lora


def _denoiser(tiny_hparams):
    """The tiny DiT with every weight random (its zero-initialised output layers would hide any change)."""
    torch.manual_seed(0)
    model = build_module(tiny_hparams()).denoiser
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 2, 8, 8, generator=g)
    return x, torch.rand(2, generator=g), torch.randn(2, 4, 16, generator=g), torch.ones(2, 4, dtype=torch.bool)


def test_declared_targets_are_the_block_projections_and_only_adapters_train(tiny_hparams):
    model = _denoiser(tiny_hparams)
    total = sum(p.numel() for p in model.parameters())
    names = apply_lora(model, rank=1, alpha=2)
    assert names == ["blocks.0.attns.0.qkv", "blocks.0.attns.0.proj", "blocks.0.cross_attn.q", "blocks.0.cross_attn.kv",
                     "blocks.0.cross_attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]  # not embedders, not adaLN
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_key(n) for n in trainable)
    assert sum(p.numel() for p in trainable.values()) <= 0.05 * total
    x, t, ctx, mask = _inputs()
    model(x, t, ctx, mask).square().mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)  # the frozen base gets no gradient


@pytest.mark.parametrize("rank,alpha", [(2, 2.0), (2, 5.0), (4, 1.0)])
def test_merged_equals_unmerged_including_alpha_other_than_rank(tiny_hparams, assert_close_scaled, rank, alpha):
    model = _denoiser(tiny_hparams)
    before = set(model.state_dict())
    apply_lora(model, rank=rank, alpha=alpha, targets=["blocks.*.attns.*.qkv", "blocks.*.mlp.fc?"])
    with torch.no_grad():  # B starts at zero (the base model): give the adapter a real update
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.5)
    model.eval()
    inputs = _inputs()
    with torch.no_grad():
        unmerged = model(*inputs)
        merge_lora(model)
        merged = model(*inputs)
    assert set(model.state_dict()) == before and not lora_layers(model)  # plain linears again
    assert_close_scaled(merged, unmerged, rtol=1e-6)
    base = _denoiser(tiny_hparams).eval()
    with torch.no_grad():
        assert (base(*inputs) - merged).abs().max() > 1e-3  # the adapter changed the model


def test_glob_patterns_and_exact_names(tiny_hparams):
    model = _denoiser(tiny_hparams)
    assert find_targets(model, "blocks.*.cross_attn.*") == ["blocks.0.cross_attn.q", "blocks.0.cross_attn.kv",
                                                            "blocks.0.cross_attn.proj"]
    assert find_targets(model, ["final_layer.linear"]) == ["final_layer.linear"]


def test_an_unknown_pattern_names_the_patterns_and_available_modules(tiny_hparams):
    model = _denoiser(tiny_hparams)
    with pytest.raises(ValueError, match=r"\['blocks\.\*\.to_q'\] match no nn.Linear.*available: t_embedder\.mlp\.0"):
        apply_lora(model, rank=2, targets=["blocks.*.mlp.fc1", "blocks.*.to_q"])
    assert not lora_layers(model)  # nothing was changed
    with pytest.raises(ValueError, match="Sequential declares no lora_targets.*linear modules: 0, 1"):
        find_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)).append(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="rank must be a positive"):
        apply_lora(model, rank=0)
    assert linear_names(model)[0] == "t_embedder.mlp.0"
