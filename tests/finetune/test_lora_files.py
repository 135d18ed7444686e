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

WAN = {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 3, "out_channels": 3,
       "text_dim": 16, "freq_dim": 16, "ffn_dim": 32, "num_layers": 2, "rope_max_seq_len": 32, "text_length": None}


#: the linears of a block of Wan's own WanModel (Wan-Video/Wan2.1 wan/modules/model.py), written out apart from lvdm's map
WAN_BLOCK = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
             "cross_attn.o", "ffn.0", "ffn.2")


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
    adapted = list(lora_layers(module.denoiser))
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
    The original layout (Wan's own module names) loads too, through diffusers' conversion of Wan LoRAs,
    and the loader written from ComfyUI's rules (below) takes every key against Wan's weight names."""
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
        wan = [f"diffusion_model.blocks.{i}.{m}.weight" for i in range(2) for m in WAN_BLOCK]  # Wan's own names
        assert sorted(comfy_patches(load_file(out), wan)) == sorted(wan)
    merge_lora(module.denoiser)
    x, t, context = _wan_inputs()
    with torch.no_grad():
        ours = module.denoiser(x, t, context)
        theirs = pipe.transformer(x, t, context, return_dict=False)[0]
    assert_close_scaled(theirs, ours, rtol=1e-5)


# ----------------------------------------------------------------------------- the original layout
def comfy_patches(lora: dict[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """A LoRA loader written from ComfyUI's documented rules (comfy/lora.py ``model_lora_keys_unet``,
    ``load_lora``; comfy/weight_adapter/lora.py): every ``diffusion_model.<path>.weight`` of the model
    is reachable as ``lora_unet_<path with _>`` and as the generic ``diffusion_model.<path>``; each
    such name ``x`` takes ``x.lora_up.weight`` / ``x.lora_down.weight`` or ``x.lora_B.weight`` /
    ``x.lora_A.weight``, and ``x.alpha`` (update ``alpha / rank · up @ down``, 1 · when no alpha).
    A file key left over is what ComfyUI logs as "lora key not loaded": here a failure.
    Returns ``{model key: update}``."""
    key_map = {}
    for key in model_keys:
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            path = key[len("diffusion_model."):-len(".weight")]
            key_map["lora_unet_" + path.replace(".", "_")] = key
            key_map[key[:-len(".weight")]] = key
    patches, loaded = {}, set()
    for name, target in key_map.items():
        alpha = lora.get(f"{name}.alpha")
        for up, down in ((f"{name}.lora_up.weight", f"{name}.lora_down.weight"),
                         (f"{name}.lora_B.weight", f"{name}.lora_A.weight")):
            if up in lora:
                scale = 1.0 if alpha is None else alpha.item() / lora[down].shape[0]
                patches[target] = scale * lora[up].double() @ lora[down].double()
                loaded |= {up, down, f"{name}.alpha"}
                break
    not_loaded = sorted(set(lora) - loaded)
    assert not not_loaded, f"lora key not loaded: {not_loaded[:5]} ({len(not_loaded)} in all)"
    return patches


def _patched(state_dict, patches):
    for key, update in patches.items():
        assert update.shape == state_dict[key].shape, key
    return {k: (v.double() + patches[k]).float() if k in patches else v for k, v in state_dict.items()}


def _stdit3():
    from lvdm.models.stdit import STDiT

    return STDiT(in_channels=2, hidden_size=24, depth=2, num_heads=2, patch_size=(1, 2, 2), context_dim=8,
                 context_length=3, base_size=2, temporal="blocks", temporal_position="rope", qk_norm=True).eval()


def _stdit_inputs(seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, 3, 4, 4, generator=g), torch.rand(2, generator=g) * 1000, torch.randn(2, 3, 8, generator=g)


def _opensora_layout(state_dict, names):
    """lvdm's STDiT3 weights under Open-Sora's names: the linears by ``names`` (the map under test),
    the rest by Open-Sora's block and caption names."""
    out = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in names:
            key = f"{names[module]}.{param}"
        elif key.startswith("blocks."):
            key = "spatial_" + key
        out[key.replace("null_context", "y_embedder.y_embedding")] = value
    return out


def test_opensora_stdit3_original_layout_is_consumed_by_comfy_rules_and_converts_back_to_the_merged_model(
        assert_close_scaled):
    """The original-layout file of an STDiT3 LoRA: every key is taken by ComfyUI's rules against
    Open-Sora's own weight names (checked by lvdm's Open-Sora converter, which reads published
    STDiT3 files), and the patched Open-Sora weights, converted back, give lvdm's merged output."""
    from lvdm.finetune.lora_files import original_names
    from lvdm.models.convert.opensora import convert_state_dict

    model = _randomize(_stdit3())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    opensora = _opensora_layout(base, original_names(model))
    assert convert_state_dict(opensora).keys() == base.keys()  # the names are the ones Open-Sora's files use
    lvdm_only = [k for k in opensora if k.startswith(("blocks.", "context_proj.")) or ".cross_attn.q." in k
                 or ".cross_attn.kv." in k]  # Open-Sora's files: spatial_blocks, y_embedder.y_proj, q_linear, kv_linear
    assert not lvdm_only and {"spatial_blocks.0.cross_attn.kv_linear.weight", "temporal_blocks.1.cross_attn.q_linear.weight",
                              "y_embedder.y_proj.fc1.weight"} <= set(opensora)
    apply_lora(model, 2, 5.0)
    for layer in lora_layers(model).values():
        _randomize(layer.lora_A, 0.3, 1), _randomize(layer.lora_B, 0.3, 2)
    lora = export_tensors(adapter_pairs(model), model, "original")
    assert all(k.startswith("diffusion_model.") for k in lora) and "diffusion_model.temporal_blocks.1.attn.qkv.alpha" in lora
    comfy_model = {f"diffusion_model.{k}": v for k, v in opensora.items()}  # ComfyUI's state-dict prefix
    patched = _patched(comfy_model, comfy_patches(lora, comfy_model))
    comfy = _stdit3()
    comfy.load_state_dict(convert_state_dict({k.removeprefix("diffusion_model."): v for k, v in patched.items()}))
    merge_lora(model)
    with torch.no_grad():
        assert_close_scaled(comfy(*_stdit_inputs()), model(*_stdit_inputs()), rtol=1e-5)


#: Tencent HunyuanVideo's module names of the linears LoRA adapts (hyvideo/modules/models.py:
#: MMDoubleStreamBlock, MMSingleStreamBlock), written out here apart from lvdm's map.
TENCENT_DOUBLE = ("img_attn_qkv", "img_attn_proj", "img_mlp.fc1", "img_mlp.fc2", "txt_attn_qkv", "txt_attn_proj",
                  "txt_mlp.fc1", "txt_mlp.fc2")
TENCENT_SINGLE = ("linear1", "linear2")
#: lvdm linears whose original-layout pair diffusers' HunyuanVideo LoRA conversion cannot read at a tiny size
UNREAD = ("linear1", "context_embedder.blocks.0.attn.qkv")
TENCENT_OTHER = ("img_in.proj", "time_in.mlp.0", "time_in.mlp.2", "vector_in.in_layer", "vector_in.out_layer",
                 "guidance_in.mlp.0", "guidance_in.mlp.2", "txt_in.input_embedder", "txt_in.t_embedder.mlp.0",
                 "txt_in.t_embedder.mlp.2", "txt_in.c_embedder.linear_1", "txt_in.c_embedder.linear_2",
                 *(f"txt_in.individual_token_refiner.blocks.0.{n}" for n in ("self_attn_qkv", "self_attn_proj",
                                                                              "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")),
                 *(f"double_blocks.{i}.{s}_mod.linear" for i in range(2) for s in ("img", "txt")),
                 *(f"single_blocks.{i}.modulation.linear" for i in range(2)), "final_layer.linear",
                 "final_layer.adaLN_modulation.1")


def test_hunyuanvideo_original_layout_fuses_qkv_as_tencent_and_diffusers_reads_it_to_the_merged_output(
        assert_close_scaled):
    """lvdm's MMDiT (HunyuanVideo) LoRA in the original layout: Tencent's fused names
    (``img_attn_qkv``, ``linear1``), every key taken by ComfyUI's rules; diffusers' own conversion of
    original HunyuanVideo LoRAs splits the fused ``lora_B`` into q / k / v (and the single blocks'
    mlp) and its model then gives lvdm's merged output."""
    import copy

    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

    from lvdm.finetune.lora_files import original_names

    ref, model = _hunyuan_pair()
    apply_lora(model, 2, 5.0, targets=sorted(original_names(model)))  # every linear with a Tencent name
    for name, layer in lora_layers(model).items():
        _randomize(layer.lora_A, 0.3, 1), _randomize(layer.lora_B, 0.0 if name.endswith(UNREAD) else 0.3, 2)
    lora = export_tensors(adapter_pairs(model), model, "original")
    tencent = [f"diffusion_model.double_blocks.{i}.{n}.weight" for i in range(2) for n in TENCENT_DOUBLE]
    tencent += [f"diffusion_model.single_blocks.{i}.{n}.weight" for i in range(2) for n in TENCENT_SINGLE]
    patches = comfy_patches(lora, tencent + [f"diffusion_model.{n}.weight" for n in TENCENT_OTHER])
    assert set(tencent) <= set(patches)
    # diffusers' HunyuanVideo loader takes no .alpha keys: fold alpha / rank into lora_B first. It cannot split
    # two fused pairs here (linear1: it assumes the real width, 3072; the refiner's qkv: it chunks lora_A too),
    # so those updates are zero (B = 0) and left out of its file
    folded = {k: v * (5.0 / 2) if k.endswith("lora_B.weight") else v for k, v in lora.items()
              if not k.endswith(".alpha") and ".linear1." not in k and ".self_attn_qkv." not in k}
    theirs = copy.deepcopy(ref)
    theirs.load_lora_adapter(HunyuanVideoLoraLoaderMixin.lora_state_dict(folded), prefix="transformer")
    merge_lora(model)
    _assert_same_output(ref, theirs, model, assert_close_scaled)


def _hunyuan_pair():
    """A tiny random diffusers HunyuanVideo transformer and lvdm's MMDiT with its converted weights."""
    import diffusers

    from lvdm.models.convert.hunyuan import convert_state_dict, mmdit_kwargs
    from lvdm.models.mmdit import MMDiT

    ref = _randomize(diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(4, 4, 4)).eval())
    model = MMDiT(**mmdit_kwargs(ref.config)).eval()
    model.load_state_dict(convert_state_dict(ref.state_dict(), model.state_dict()))
    return ref, model


def _assert_same_output(ref, theirs, model, assert_close_scaled):
    """diffusers' transformer with the LoRA (``theirs``) gives lvdm's ``model``'s output, and the LoRA
    changes the output of the base ``ref``."""
    g = torch.Generator().manual_seed(1)
    x, ctx, pooled = torch.randn(2, 4, 3, 4, 6, generator=g), torch.randn(2, 7, 16, generator=g), torch.randn(2, 8, generator=g)
    t, mask, guidance = torch.tensor([300.0, 700.0]), torch.ones(2, 7, dtype=torch.bool), torch.tensor([6.0, 3.5])
    with torch.no_grad():
        expected = theirs(x, t, ctx, mask.long(), pooled, guidance=guidance * 1000, return_dict=False)[0]
        base = ref(x, t, ctx, mask.long(), pooled, guidance=guidance * 1000, return_dict=False)[0]
        out = model(x, t, ctx, mask, pooled_text=pooled, guidance=guidance)
    assert (expected - base).abs().max() > 0.1 * base.abs().max()  # the LoRA changes the output
    assert_close_scaled(out, expected, rtol=1e-5)


def test_hunyuanvideo_diffusers_layout_splits_and_fuses_qkv_exactly(tmp_path, assert_close_scaled):
    """HunyuanVideo in diffusers' layout, both ways: lvdm's fused ``qkv`` / ``linear1`` adapters export as
    diffusers' ``to_q`` / ``to_k`` / ``to_v`` (/ ``proj_mlp``) with one A and B's rows split, and load into
    diffusers' transformer to lvdm's merged output; a diffusers LoRA with its own A per projection
    reads into lvdm's fused linears (A stacked, B block-diagonal) to diffusers' output."""
    import copy

    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from lvdm.finetune.lora_files import diffusers_metadata

    ref, model = _hunyuan_pair()
    apply_lora(model, 2, 5.0)
    for layer in lora_layers(model).values():
        _randomize(layer.lora_A, 0.3, 1), _randomize(layer.lora_B, 0.3, 2)
    lora = export_tensors(adapter_pairs(model), model, "diffusers")
    assert "transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight" in lora
    targets = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in lora})
    save_file(lora, str(tmp_path / "ours.safetensors"), metadata=diffusers_metadata(targets, 2, 5.0))
    theirs = copy.deepcopy(ref)  # what HunyuanVideoPipeline.load_lora_weights does with the file
    state_dict, metadata = HunyuanVideoLoraLoaderMixin.lora_state_dict(str(tmp_path / "ours.safetensors"),
                                                                       return_lora_metadata=True)
    theirs.load_lora_adapter(state_dict, prefix="transformer", metadata=metadata)
    _assert_same_output(ref, theirs, merge_lora(model), assert_close_scaled)

    ref, model = _hunyuan_pair()
    theirs = copy.deepcopy(ref)
    blocks = r".*transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_[qkv]_proj|to_add_out)|ff(_context)?\.net\.(0\.proj|2)|proj_mlp|proj_out)"
    theirs.add_adapter(LoraConfig(r=2, lora_alpha=5.0, target_modules=blocks))
    for name, param in theirs.named_parameters():
        if ".lora_" in name:
            torch.nn.init.normal_(param, 0, 0.3)
    tensors = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(theirs).items()}
    targets = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in tensors})
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata=diffusers_metadata(targets, 2, 5.0))
    assert merge_lora_file(model, tmp_path / "theirs.safetensors")[:2] == ["double_blocks.0.text.mlp.fc1",
                                                                          "double_blocks.0.text.mlp.fc2"]
    _assert_same_output(ref, theirs, model, assert_close_scaled)


# ------------------------------------------------------------------------------ reading LoRA files
def _kohya(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout file as kohya's trainers and musubi-tuner write it: ``lora_unet_<path with _>``
    with ``lora_down`` / ``lora_up`` / ``alpha``."""
    renames = ((".lora_A.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_up.weight"), (".alpha", ".alpha"))
    out = {}
    for key, value in lora.items():
        path = key.removeprefix("diffusion_model.")
        for ours, theirs in renames:
            if path.endswith(ours):
                out["lora_unet_" + path[: -len(ours)].replace(".", "_") + theirs] = value
    return out


def _wan():
    from lvdm.models.diffusers_adapter import build_wan

    return build_wan(**WAN).eval()


def _mmdit_output(model):
    g = torch.Generator().manual_seed(5)
    x, ctx, pooled = torch.randn(2, 4, 3, 4, 6, generator=g), torch.randn(2, 7, 16, generator=g), torch.randn(2, 8, generator=g)
    return model(x, torch.tensor([300.0, 700.0]), ctx, torch.ones(2, 7, dtype=torch.bool), pooled_text=pooled)


#: backbone → (a new one, its output on fixed inputs)
BACKBONES = {"wan": (_wan, lambda model: model(*_wan_inputs())), "stdit3": (_stdit3, lambda model: model(*_stdit_inputs())),
             "hunyuanvideo": (lambda: _hunyuan_pair()[1], _mmdit_output)}


def _write(path, model, layout: str) -> str:
    """``model``'s adapters (rank 2, alpha 5) as a LoRA file of ``layout`` (diffusers / original / kohya)."""
    from lvdm.finetune.lora_files import diffusers_metadata

    written = "diffusers" if layout == "diffusers" else "original"
    lora = export_tensors(adapter_pairs(model), model, written)
    targets = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in lora})
    metadata = diffusers_metadata(targets, 2, 5.0) if layout == "diffusers" else {}
    save_file(_kohya(lora) if layout == "kohya" else lora, str(path), metadata=metadata)
    return str(path)


@pytest.mark.parametrize("layout, backbone", [  # kohya / musubi files of Wan and HunyuanVideo use the original names
    ("diffusers", "wan"), ("diffusers", "stdit3"), ("diffusers", "hunyuanvideo"), ("original", "stdit3"),
    ("original", "hunyuanvideo"), ("kohya", "wan"), ("kohya", "hunyuanvideo")])
def test_a_lora_file_loads_back_for_training_and_for_sampling(tmp_path, assert_close_scaled, backbone, layout):
    """Export → import equals, each layout: a rank-2 adapter of another alpha takes the file's update
    exactly (continued training: A equal, alpha / rank folded into B), merged == unmerged within 1e-6
    (alpha 5 != rank 2), and the file merged straight into the base weights (sampling) gives the same."""
    build, output = BACKBONES[backbone]
    model = _adapted(build(), rank=2, alpha=5.0)
    path = _write(tmp_path / "lora.safetensors", model, layout)
    with torch.no_grad():
        expected = output(model)
        resumed = _randomize(build())
        apply_lora(resumed, 2, 1.0)
        assert load_into_adapter(resumed, path) == sorted(lora_layers(model))
        for name, layer in lora_layers(resumed).items():
            assert torch.equal(layer.lora_A["default"].weight, lora_layers(model)[name].lora_A["default"].weight)
        assert_close_scaled(output(resumed), expected, rtol=1e-6)
        assert_close_scaled(output(merge_lora(resumed)), expected, rtol=1e-6)
        sampled = _randomize(build())
        assert merge_lora_file(sampled, path) == sorted(lora_layers(model))
        assert_close_scaled(output(sampled), expected, rtol=1e-6)
        half = _randomize(build())
        merge_lora_file(half, path, strength=0.5)
        assert (output(half) - expected).abs().max() > 1e-3  # the strength scales the update


def test_files_lvdm_cannot_place_are_one_clear_error(tmp_path, tiny_hparams):
    """Keys of no LoRA layout, modules the model lacks, a half pair, another rank or other modules
    than the run adapts: one line naming a few of the keys."""
    model = _adapted(_stdit3())
    good = _write(tmp_path / "good.safetensors", model, "original")
    lora = load_file(good)
    cases = {
        "not LoRA keys lvdm reads": {**lora, "diffusion_model.blocks.0.attn.qkv.lora_mid.weight": torch.zeros(1)},
        r"2 LoRA modules match no linear of STDiT: diffusion_model\.spatial_blocks\.7\.attn\.qkv, "
        r"diffusion_model\.vae\.proj": {**lora, **{f"diffusion_model.{m}.lora_{ab}.weight": torch.zeros(2, 2)
                                          for m in ("spatial_blocks.7.attn.qkv", "vae.proj") for ab in "AB"}},
        "1 modules lack lora_A or lora_B": {k: v for k, v in lora.items()
                                            if k != "diffusion_model.spatial_blocks.0.attn.qkv.lora_B.weight"},
        "keys of 2 layouts": {**lora, "lora_unet_x.lora_down.weight": torch.zeros(1)},
        r"has shape out x in = 72 x 2": {**lora, "diffusion_model.spatial_blocks.0.attn.qkv.lora_A.weight": torch.zeros(2, 2)},
    }
    for match, tensors in cases.items():
        save_file(tensors, str(tmp_path / "bad.safetensors"))
        with pytest.raises(ValueError, match=match):
            read_lora_file(tmp_path / "bad.safetensors", _stdit3())
    other_rank = _stdit3()
    apply_lora(other_rank, 4)
    with pytest.raises(ValueError, match="has rank 2, this run's LoRA rank is 4"):
        load_into_adapter(other_rank, good)
    from lvdm.finetune.lora_files import original_names

    with pytest.raises(ValueError, match=r"DiT has no original-model LoRA layout; it is known for Wan"):
        original_names(build_module(tiny_hparams()).denoiser)
    fewer = _stdit3()
    apply_lora(fewer, 2, targets=["blocks.*.attn.qkv"])
    with pytest.raises(ValueError, match=r"adapts other modules than this run \(not in the file: \[\], not adapted here"):
        load_into_adapter(fewer, good)
