"""LoRA files other tools read, and reading theirs (lvdm.finetune.lora_files): a Wan LoRA exported
by `lvdm lora export` loads into a diffusers WanPipeline with no unused or missing key and gives
lvdm's merged output; the original layout (Wan, HunyuanVideo, Open-Sora STDiT3) is consumed key by
key by a loader written from ComfyUI's rules; diffusers / kohya / original files load back."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from lvdm.checkpoints.load import build_module
from lvdm.finetune.lora import apply_lora, lora_layers, merge_lora
from lvdm.finetune.lora_files import (
    adapter_pairs,
    export_tensors,
    load_into_adapter,
    merge_lora_file,
    read_lora_file,
)

WAN = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
           text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, text_length=None)


def _randomize(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (zero-initialised output layers and B = 0 would hide any mistake)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    return model


def _adapted(model: torch.nn.Module, rank: int = 2, alpha: float = 5.0, targets=None) -> torch.nn.Module:
    """``model`` randomised, with random LoRA adapters (alpha != rank) on ``targets``."""
    _randomize(model)
    apply_lora(model, rank, alpha, targets=targets)
    for layer in lora_layers(model).values():
        _randomize(layer.lora_A, 0.3, 1), _randomize(layer.lora_B, 0.3, 2)
    return model


def _adapter_checkpoint(path, module, hparams, rank, alpha):
    """What `lvdm fit` with the LoRA callback writes, for ``module`` adapted in Python."""
    adapted = [name for name in lora_layers(module.denoiser)]
    torch.save({"state_dict": {k: v for k, v in module.state_dict().items() if ".lora_" in k},
                "hyper_parameters": hparams, "global_step": 0,
                "callbacks": {"LoRA": {"rank": rank, "alpha": alpha, "dropout": 0.0, "module": "denoiser",
                                       "targets": adapted, "init": "default", "base": [], "base_fingerprint": ""}}},
               path)
    return path


def _wan_inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 2, 4, 4, generator=g), torch.rand(2, generator=g) * 1000, torch.randn(2, 5, 16, generator=g)


def _wan_pipeline(path, transformer):
    """A tiny random WanPipeline saved to ``path`` (no text encoder or VAE: the LoRA is the transformer's)."""
    import copy

    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=copy.deepcopy(transformer), vae=None,
                       scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(path)
    return WanPipeline.from_pretrained(path, tokenizer=None, text_encoder=None, vae=None)


@pytest.mark.parametrize("format", ["diffusers", "original"])
def test_wan_lora_loads_into_a_diffusers_pipeline_with_every_key_and_lvdm_merged_output(
        tmp_path, tiny_hparams, assert_close_scaled, caplog, format):
    """`lvdm lora export --format diffusers` of a LoRA on lvdm's Wan adapter: WanPipeline.load_lora_weights
    takes every key (no unexpected / missing-key warning; the peft state dict of the transformer holds
    exactly the file's keys) and the transformer's output equals lvdm's merged model within 1e-5 (float32).
    The original layout (Wan's own module names) loads too, through diffusers' conversion of Wan LoRAs."""
    from peft.utils import get_peft_model_state_dict

    from lvdm.cli import main

    hparams = tiny_hparams(denoiser={"class_path": "lvdm.models.diffusers_adapter.build_wan", "init_args": WAN})
    module = build_module(hparams)
    pipe = _wan_pipeline(tmp_path / "pipe", _randomize(module.denoiser).transformer)
    _adapted(module.denoiser, rank=2, alpha=5.0)
    ckpt = _adapter_checkpoint(tmp_path / "adapter.ckpt", module, hparams, 2, 5.0)
    out = str(tmp_path / "lora.safetensors")
    main(["lora", "export", "--checkpoint", str(ckpt), "--out", out, "--format", format])
    file_keys = set(load_file(out))
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(out)
    assert not [r.getMessage() for r in caplog.records if "key" in r.getMessage().lower()]
    (name,) = pipe.transformer.peft_config  # one adapter
    loaded = set(get_peft_model_state_dict(pipe.transformer, adapter_name=name))
    if format == "diffusers":
        assert {f"transformer.{k}" for k in loaded} == file_keys
    else:  # A / B pairs (the .alpha keys are folded into them by diffusers' conversion)
        alphas = [k for k in file_keys if k.endswith(".alpha")]
        assert len(alphas) == len(lora_layers(module.denoiser)) == 20 and len(loaded) == len(file_keys) - 20
    merge_lora(module.denoiser)
    x, t, context = _wan_inputs()
    with torch.no_grad():
        ours = module.denoiser(x, t, context)
        theirs = pipe.transformer(x, t, context, return_dict=False)[0]
    assert_close_scaled(theirs, ours, rtol=1e-5)
