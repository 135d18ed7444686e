"""lvdm's MMDiT against diffusers' HunyuanVideoTransformer3DModel (converted weights), the
converters' strict key reports (diffusers HunyuanVideo, Open-Sora 2.0's own layout), the
real-size presets on meta and the Open-Sora 2.0 options. Parity with Open-Sora 2.0's own code is
scripts/opensora2_parity.py (it needs an Open-Sora checkout). The backbone contract (SP(2),
checkpointing, FLOPs, identity at init…) is checked by tests/models/test_backbone_battery.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lvdm.models.convert import opensora2
from lvdm.models.convert.hunyuan import convert_state_dict, mmdit_kwargs
from lvdm.models.mmdit import MMDiT
from lvdm.models.presets import from_diffusers, from_name, from_opensora2
from lvdm.models.rope import rope_3d

diffusers = pytest.importorskip("diffusers")

TEXT_DIM, POOLED_DIM, TEXT_LEN = 16, 8, 7


@pytest.fixture(scope="module")
def pair():
    """A tiny random diffusers HunyuanVideo transformer (2 double + 2 single blocks, float32) and
    lvdm's MMDiT with its converted weights."""
    torch.manual_seed(0)
    ref = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM, rope_axes_dim=(4, 4, 4)).eval()
    with torch.no_grad():  # random everywhere: the zero-initialised outputs would hide differences
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = MMDiT(**mmdit_kwargs(ref.config)).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), ours.state_dict()), strict=True)
    return ref, ours


def _inputs(frames: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, 4, 6, generator=g)  # non-square: a 2 × 3 patch grid
    ctx = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=g)
    mask = torch.ones(2, TEXT_LEN, dtype=torch.bool)
    mask[0, 4:] = False  # a padded caption (padding at the end, as the tokenizers pad)
    return x, torch.tensor([300.0, 700.0]), ctx, mask, torch.randn(2, POOLED_DIM, generator=g)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_equals_diffusers_hunyuanvideo(pair, frames, assert_close_scaled):
    ref, ours = pair
    x, t, ctx, mask, pooled = _inputs(frames)
    guidance = torch.tensor([6.0, 3.5])
    with torch.no_grad():
        expected = ref(x, t, ctx, mask.long(), pooled, guidance=guidance * 1000, return_dict=False)[0]
        out = ours(x, t, ctx, mask, pooled_text=pooled, guidance=guidance)
    assert expected.abs().max() > 1  # the comparison could fail
    assert_close_scaled(out, expected)
    with torch.no_grad():  # the padded tokens' values do not matter: they are masked everywhere
        changed = ctx.clone()
        changed[0, 4:] = 100.0
        assert_close_scaled(ours(x, t, changed, mask, pooled_text=pooled, guidance=guidance), out)


def test_conditions_change_the_output(pair):
    """guidance and pooled text reach the model (the defaults are 6.0 and zeros)."""
    _, ours = pair
    x, t, ctx, mask, pooled = _inputs(1)
    with torch.no_grad():
        base = ours(x, t, ctx, mask, pooled_text=pooled, guidance=torch.tensor([6.0, 6.0]))
        assert torch.equal(ours(x, t, ctx, mask, pooled_text=pooled), base)
        assert not torch.allclose(ours(x, t, ctx, mask, pooled_text=pooled, guidance=torch.tensor([2.0, 2.0])), base)
        assert not torch.allclose(ours(x, t, ctx, mask, guidance=torch.tensor([6.0, 6.0])), base)
    with pytest.raises(ValueError, match=r"pooled_text must be \[B, pooled_text_dim\] = \[2, 8\]"):
        ours(x, t, ctx, mask, pooled_text=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no learned null caption"):
        ours(x, t)


def test_per_frame_timesteps(pair):
    """Frame k's tokens are modulated by frame k's time; the text by the sample's largest time (a
    clean first frame, image-to-video, leaves the text at the noise level)."""
    _, ours = pair
    t = torch.tensor([300.0, 700.0])
    per_frame = torch.stack([torch.zeros(2), t, t], dim=1)
    with torch.no_grad():
        vec, txt_vec, text_time = ours._conditioning(per_frame, 2, 3, None, None)
        uniform, uniform_txt, _ = ours._conditioning(t, 2, 3, None, None)
        clean, _, _ = ours._conditioning(torch.zeros(2), 2, 3, None, None)
    assert vec.shape == (2, 3, 24) and torch.equal(text_time, t)
    torch.testing.assert_close(txt_vec, uniform_txt)
    torch.testing.assert_close(vec[:, 1:], uniform.expand(-1, 2, -1))
    torch.testing.assert_close(vec[:, :1], clean)


def test_sequence_parallel_plan_cuts_video_tokens_only():
    plan = MMDiT.sequence_parallel_plan
    assert (plan.tokens, plan.block_lists) == ("x", ("double_blocks", "single_blocks"))
    assert not {"txt", "txt_vec", "txt_mask"} & set(plan.follow_split)


def test_converter_reports_every_key(pair):
    ref, ours = pair
    sd = dict(ref.state_dict())
    with pytest.raises(KeyError, match=r"1 source weights have no place in MMDiT: \['stray.weight'\]"):
        convert_state_dict({**sd, "stray.weight": torch.zeros(1)}, ours.state_dict())
    del sd["single_transformer_blocks.1.proj_mlp.bias"]  # linear1's bias can no longer be fused
    with pytest.raises(KeyError, match=r"no place in MMDiT.*no source: \['single_blocks.1.linear1.bias'\]"):
        convert_state_dict(sd, ours.state_dict())
    with pytest.raises(ValueError, match="image_condition_type='token_replace' is not supported"):
        mmdit_kwargs({**ref.config, "image_condition_type": "token_replace"})


def test_from_diffusers_folder(pair, tmp_path, assert_close_scaled):
    """A saved diffusers HunyuanVideo folder (a pipeline's transformer/) loads as an MMDiT."""
    ref, ours = pair
    ref.save_pretrained(tmp_path / "transformer")
    loaded = from_diffusers(str(tmp_path)).eval()
    assert type(loaded) is MMDiT
    x, t, ctx, mask, pooled = _inputs(5)
    with torch.no_grad():
        assert_close_scaled(loaded(x, t, ctx, mask, pooled_text=pooled), ours(x, t, ctx, mask, pooled_text=pooled))


def test_hunyuanvideo_preset_is_diffusers_at_real_size():
    """On meta: the preset has the published 12,821,012,544 parameters, diffusers' default config
    (HunyuanVideo's) gives the preset's arguments, and every real-size weight converts with its shape."""
    chosen = from_name("hunyuanvideo")
    with torch.device("meta"):
        ref = diffusers.HunyuanVideoTransformer3DModel()
        ours = chosen.build()
    assert sum(p.numel() for p in ours.parameters()) == chosen.num_params == 12_821_012_544
    assert mmdit_kwargs(ref.config) == dict(chosen.kwargs)
    convert_state_dict(ref.state_dict(), ours.state_dict())  # raises on any missing, extra or misshapen key


def test_rope_axes_dims_must_fill_the_head():
    assert rope_3d((2, 2, 2), 12, 256.0, (4, 4, 4))[0].shape == (8, 12)
    with pytest.raises(ValueError, match=r"axes_dims \(4, 4, 2\) must sum to the head dimension 12"):
        rope_3d((2, 2, 2), 12, 256.0, (4, 4, 2))
    with pytest.raises(ValueError, match="rope_axes_dims"):
        MMDiT(hidden_size=24, num_heads=2, rope_axes_dims=(4, 4, 2), depth_double=0, depth_single=0)


# ------------------------------------------------------------------------------ Open-Sora 2.0
OS2_KEYS = json.loads((Path(__file__).parent / "opensora2_tiny_keys.json").read_text())
#: the model dict of Open-Sora 2.0's configs/diffusion/inference/256px.py
OS2_CONFIG = dict(in_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24,
                  depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10_000, qkv_bias=True,
                  guidance_embed=False, cond_embed=True, fused_qkv=False)


def test_opensora2_checkpoint_layout_converts():
    """Every weight of Open-Sora 2.0's released layout (unfused QKV, cond_in; key names and shapes
    recorded from its own MMDiTModel) has its place, and the fusions keep the values."""
    torch.manual_seed(0)
    sd = {k: torch.randn(shape) for k, shape in OS2_KEYS["shapes"].items()}
    model = MMDiT(**opensora2.mmdit_kwargs(OS2_KEYS["config"]))
    model.load_state_dict(opensora2.convert_state_dict(sd, model.state_dict()), strict=True)
    blocks = "single_blocks.1"
    expected = torch.cat([sd[f"{blocks}.q_proj.weight"], sd[f"{blocks}.k_proj.weight"], sd[f"{blocks}.v_mlp.weight"]])
    assert torch.equal(model.single_blocks[1].linear1.weight, expected)
    assert torch.equal(model.double_blocks[0].text.q_norm.weight, sd["double_blocks.0.txt_attn.norm.query_norm.scale"])
    assert torch.equal(model.x_embedder.proj.weight.flatten(1), sd["img_in.weight"])  # (c, ph, pw) packing
    assert torch.equal(model.cond_embedder.proj.weight.flatten(1), sd["cond_in.weight"])
    with pytest.raises(KeyError, match=r"2 MMDiT weights have no source: \['cond_embedder.proj.bias'"):
        opensora2.convert_state_dict({k: v for k, v in sd.items() if not k.startswith("cond_in")}, model.state_dict())


def test_opensora2_preset_is_its_config():
    assert opensora2.mmdit_kwargs(OS2_CONFIG) == dict(from_name("opensora-2.0").kwargs)


def test_opensora2_options():
    """Open-Sora 2.0 attends to every text token (the mask changes nothing), and its image condition
    defaults to zeros (text-to-video); a model without one refuses it."""
    torch.manual_seed(0)
    model = MMDiT(**opensora2.mmdit_kwargs(OS2_KEYS["config"])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        x, t, ctx, mask, pooled = _inputs(5)
        cond = torch.zeros(2, 5, 5, 4, 6)
        out = model(x, t, ctx, mask, pooled_text=pooled)
        assert torch.equal(model(x, t, ctx, None, pooled_text=pooled), out)
        assert torch.equal(model(x, t, ctx, mask, pooled_text=pooled, image_condition=cond), out)
        assert not torch.allclose(model(x, t, ctx, mask, pooled_text=pooled, image_condition=cond + 1), out)
    with pytest.raises(ValueError, match=r"image_condition must be \[B, 5, T, H, W\]"):
        model(x, t, ctx, mask, image_condition=cond[:, :3])
    with pytest.raises(ValueError, match="takes no image_condition"):
        MMDiT(**mmdit_kwargs_tiny())(x, t, ctx, mask, image_condition=cond)


def mmdit_kwargs_tiny() -> dict:
    return dict(in_channels=4, hidden_size=24, num_heads=2, depth_double=1, depth_single=1, context_dim=TEXT_DIM,
                pooled_text_dim=POOLED_DIM, rope_axes_dims=(4, 4, 4))


def test_from_opensora2_file(tmp_path):
    """An Open-Sora 2.0 ``.safetensors`` in its released layout loads into the preset (tiny sizes)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = {k: torch.randn(shape) for k, shape in OS2_KEYS["shapes"].items()}
    save_file(sd, tmp_path / "Open_Sora_v2.safetensors")
    tiny = {k: v for k, v in opensora2.mmdit_kwargs(OS2_KEYS["config"]).items() if k in (
        "in_channels", "hidden_size", "num_heads", "depth_double", "depth_single", "context_dim", "pooled_text_dim",
        "image_condition_channels", "rope_axes_dims")}
    model = from_opensora2(str(tmp_path / "Open_Sora_v2.safetensors"), **tiny)
    assert torch.equal(model.final_layer.adaLN_modulation[1].weight, sd["final_layer.adaLN_modulation.1.weight"])


def test_trains_and_samples_in_the_module(train_and_sample):
    """The tiny MMDiT inside lvdm's LatentDiffusionModule trains one step and samples with guidance."""
    torch.manual_seed(0)
    denoiser = MMDiT(in_channels=3, hidden_size=24, num_heads=2, depth_double=1, depth_single=1, context_dim=16,
                     refiner_depth=1, pooled_text_dim=0, rope_axes_dims=(4, 4, 4))
    train_and_sample(denoiser, denoiser.final_layer.linear.weight)
