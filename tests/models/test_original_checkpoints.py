"""The original checkpoints of HunyuanVideo (Tencent's ``mp_rank_00_model_states.pt``) and Wan 2.1
(the Wan repository's ``diffusion_pytorch_model*.safetensors``): a tiny random model written in the
original layout (the inverse of the loaders' name table) loads back exactly through
``from_hunyuan_original`` / ``from_wan_original``, and diffusers' own single-file converters read
the same file into the same weights (the independent reference). At real size on meta, diffusers'
converters turn the original key set lvdm's table gives into exactly diffusers' model's keys and
shapes, and the parameters add up to the presets' counts."""

from __future__ import annotations

import json

import pytest
import torch

from lvdm.models.convert import hunyuan, hunyuan_original, wan_original
from lvdm.models.presets import from_hunyuan_original, from_name, from_wan_original

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders import single_file_utils  # noqa: E402

HUNYUAN_TINY = dict(in_channels=4, hidden_size=24, num_heads=2, depth_double=2, depth_single=2, refiner_depth=1,
                    context_dim=16, pooled_text_dim=8, rope_axes_dims=(4, 4, 4))
WAN_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=8, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, text_length=7)


def _tencent_layout(sd: dict, channels: int) -> dict:
    """An MMDiT (HunyuanVideo) state dict under Tencent's names: the inverse of the loader's table."""
    def count(prefix: str, part: int) -> int:
        return len({k.split(".")[part] for k in sd if k.startswith(prefix)})

    blocks = hunyuan_original.block_keys(count("double_blocks.", 1), count("single_blocks.", 1),
                                         count("context_embedder.blocks.", 2))
    rules = {**hunyuan_original.module_rules(blocks), "final_layer.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
             "final_layer.linear": "final_layer.linear"}
    out = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module == "final_layer.linear":  # lvdm's (pt, ph, pw, c) output rows → Tencent's (c, pt, ph, pw)
            value = value.unflatten(0, (-1, channels)).transpose(0, 1).flatten(0, 1)
        out[f"{rules[module]}.{param}"] = value
    return out


def _wan_layout(sd: dict) -> dict:
    """A diffusers WanTransformer3DModel state dict under the Wan repository's names (the inverse table)."""
    rules = wan_original.module_rules({f"blocks.{k.split('.')[1]}.": None for k in sd if k.startswith("blocks.")})
    tables = wan_original.table_rules(sd)
    out = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        out[tables[key] if key in tables else f"{rules[module]}.{param}"] = value
    return out


@pytest.fixture(scope="module")
def hunyuan_file(tmp_path_factory, random_weights):
    model = random_weights(from_name("hunyuanvideo").build(**HUNYUAN_TINY))
    path = tmp_path_factory.mktemp("hunyuan") / "mp_rank_00_model_states.pt"
    torch.save({"module": _tencent_layout(model.state_dict(), 4)}, path)
    return model, path


def _tencent_to_diffusers(original: dict, hidden: int) -> dict:
    """diffusers' converter of original HunyuanVideo files; it cuts a single block's ``linear1`` at
    the real width (3072), so at a tiny width that one cut is made here, as Tencent's model makes it."""
    original, split = dict(original), {}
    if hidden != 3072:
        for key in [k for k in original if ".linear1." in k]:
            value = original.pop(key)
            block, param = key.replace("single_blocks", "single_transformer_blocks").split(".linear1.")
            parts = value.split([hidden, hidden, hidden, value.shape[0] - 3 * hidden])
            split.update({f"{block}.{name}.{param}": part for name, part in zip(
                ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts)})
    return {**single_file_utils.convert_hunyuan_video_transformer_to_diffusers(original), **split}


def test_hunyuan_original_file_loads_exactly_and_as_diffusers_reads_it(hunyuan_file, assert_close_scaled):
    model, path = hunyuan_file
    loaded = from_hunyuan_original(str(path), **HUNYUAN_TINY).eval()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    ref = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(4, 4, 4)).eval()
    original = torch.load(path, weights_only=True)["module"]
    ref.load_state_dict(_tencent_to_diffusers(original, 24), strict=True)
    via_diffusers = hunyuan.convert_state_dict(ref.state_dict(), loaded.state_dict())  # from_diffusers' path
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in via_diffusers.items())
    g = torch.Generator().manual_seed(1)
    x, ctx, pooled = torch.randn(1, 4, 1, 4, 6, generator=g), torch.randn(1, 5, 16, generator=g), torch.randn(1, 8)
    t, mask = torch.tensor([400.0]), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        expected = ref(x, t, ctx, mask.long(), pooled, guidance=torch.tensor([6000.0]), return_dict=False)[0]
        out = loaded(x, t, ctx, mask, pooled_text=pooled, guidance=torch.tensor([6.0]))
    assert expected.abs().max() > 1e-2
    assert_close_scaled(out, expected)


def test_hunyuan_original_safetensors_and_refusals(hunyuan_file, tmp_path):
    from safetensors.torch import save_file

    model, path = hunyuan_file
    original = torch.load(path, weights_only=True)["module"]
    save_file(original, tmp_path / "plain.safetensors")
    loaded = from_hunyuan_original(str(tmp_path / "plain.safetensors"), **HUNYUAN_TINY)
    assert torch.equal(loaded.final_layer.linear.weight, model.final_layer.linear.weight)
    missing = {k: v for k, v in original.items() if k != "double_blocks.1.img_attn_qkv.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt: .*have no source: \['double_blocks\.1\.video\.qkv\.weight'\]"):
        from_hunyuan_original(str(tmp_path / "missing.pt"), **HUNYUAN_TINY)
    torch.save({"module": {**original, "img_in.extra.weight": torch.zeros(1)}}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt: .*no place in MMDiT: \['img_in\.extra\.weight'\]"):
        from_hunyuan_original(str(tmp_path / "extra.pt"), **HUNYUAN_TINY)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cannot read .*cut\.pt"):
        from_hunyuan_original(str(tmp_path / "cut.pt"), **HUNYUAN_TINY)


@pytest.fixture(scope="module")
def wan_file(tmp_path_factory, random_weights):
    from safetensors.torch import save_file

    model = random_weights(from_name("wan2.1-t2v-1.3b").build(**WAN_TINY))
    folder = tmp_path_factory.mktemp("wan")
    save_file(_wan_layout(model.transformer.state_dict()), folder / "diffusion_pytorch_model.safetensors")
    return model, folder


def test_wan_original_file_loads_exactly_and_as_diffusers_reads_it(wan_file, assert_close_scaled):
    from safetensors.torch import load_file

    model, folder = wan_file
    loaded = from_wan_original(str(folder / "diffusion_pytorch_model.safetensors"), **WAN_TINY).eval()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    ref = diffusers.WanTransformer3DModel(**{k: v for k, v in WAN_TINY.items() if k != "text_length"}).eval()
    original = load_file(folder / "diffusion_pytorch_model.safetensors")
    ref.load_state_dict(single_file_utils.convert_wan_transformer_to_diffusers(original), strict=True)
    assert all(torch.equal(loaded.transformer.state_dict()[k], v) for k, v in ref.state_dict().items())
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, 4, 1, 4, 6, generator=g), torch.randn(1, 7, 8, generator=g)
    with torch.no_grad():
        expected = ref(x, torch.tensor([500.0]), context, return_dict=False)[0]
        out = loaded(x, torch.tensor([500.0]), context)
    assert expected.abs().max() > 1e-2
    assert_close_scaled(out, expected)


def test_wan_original_shards_and_refusals(wan_file, tmp_path):
    from safetensors.torch import load_file, save_file

    model, folder = wan_file
    original = load_file(folder / "diffusion_pytorch_model.safetensors")
    keys = sorted(original)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: original[k] for k in part}, tmp_path / name)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: name for name, part in shards.items() for k in part}}))
    loaded = from_wan_original(str(tmp_path), **WAN_TINY)  # the folder: its index
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").write_bytes(b"\x10\x00" + b"0" * 30)
    with pytest.raises(ValueError, match=r"cannot read .*00002-of-00002\.safetensors"):
        from_wan_original(str(index), **WAN_TINY)
    save_file({k: v for k, v in original.items() if k != "blocks.1.norm3.weight"}
              | {"img_emb.proj.0.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match=r"odd\.safetensors: .*no place in WanTransformer3DModel: \['img_emb\.proj"
                                         r"\.0\.weight'\].*have no source: \['blocks\.1\.norm2\.weight'\]"):
        from_wan_original(str(tmp_path / "odd.safetensors"), **WAN_TINY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds neither diffusion_pytorch_model.safetensors"):
        from_wan_original(str(tmp_path / "empty"), **WAN_TINY)


def _numel(sd) -> int:
    return sum(v.numel() for v in sd.values())


def test_real_sizes_on_meta_match_diffusers_converters_and_the_presets():
    """At real size (on meta) diffusers' converters turn the original keys lvdm's tables give into
    exactly the keys and shapes of diffusers' models, which hold the presets' parameter counts."""
    with torch.device("meta"):
        mmdit = from_name("hunyuanvideo").build()
        hunyuan_ref = diffusers.HunyuanVideoTransformer3DModel()
        wan = from_name("wan2.1-t2v-1.3b").build()
    original = _tencent_layout(mmdit.state_dict(), 16)
    assert _numel(original) == from_name("hunyuanvideo").num_params
    theirs = _tencent_to_diffusers(original, 3072)  # diffusers' own split of linear1 at 3072
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {
        k: tuple(v.shape) for k, v in hunyuan_ref.state_dict().items()}
    hunyuan_original.convert_state_dict(original, mmdit.state_dict())  # the strict report passes
    wan_sd = wan.transformer.state_dict()
    original = _wan_layout(wan_sd)
    assert _numel(original) == from_name("wan2.1-t2v-1.3b").num_params
    theirs = single_file_utils.convert_wan_transformer_to_diffusers(dict(original))
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in wan_sd.items()}
    wan_original.convert_state_dict(original, wan_sd)


def test_init_from_reads_both_original_layouts(hunyuan_file, wan_file):
    """``init_from`` (``--init_from``, a fine-tuning run's start) tells the two layouts by their keys
    and carries every weight; a weight without a place is refused naming the file."""
    from safetensors.torch import load_file, save_file

    from lvdm.checkpoints.init_from import init_from

    for (model, path), fresh in (
            (hunyuan_file, from_name("hunyuanvideo").build(**HUNYUAN_TINY)),
            (wan_file, from_name("wan2.1-t2v-1.3b").build(**WAN_TINY))):
        path = path if path.is_file() else path / "diffusion_pytorch_model.safetensors"
        report = init_from(fresh, str(path), strict=True, verbose=False)
        assert sorted(report.carried) == sorted(model.state_dict())
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    odd = path.parent / "i2v.safetensors"
    save_file({**load_file(path), "blocks.0.cross_attn.k_img.weight": torch.zeros(2)}, odd)
    with pytest.raises(ValueError, match=r"i2v\.safetensors: .*\['blocks\.0\.cross_attn\.k_img\.weight'\]"):
        init_from(fresh, str(odd), verbose=False)
