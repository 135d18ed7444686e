"""init_from: phase hand-off from an image DiT (phase 1 / PixArt-α) into a spatial-temporal
STDiT starts exactly as the image model applied frame by frame; sources and key reports."""

import json

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

from lvdm.checkpoints.load import METADATA_KEY
from lvdm.checkpoints.init_from import init_from, load_weights
from lvdm.models.stdit import STDiT

TINY = dict(in_channels=4, pred_sigma=True, hidden_size=24, depth=2, num_heads=2, context_dim=12, context_length=5,
            base_size=4, interpolation_scale=1.0)


def _trained_image_model(seed: int = 0) -> STDiT:
    """An image STDiT whose every weight is random (no zero projection: as after training)."""
    torch.manual_seed(seed)
    model = STDiT(**TINY, temporal="none", temporal_position="none").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _inputs(frames: int = 3):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, frames, 6, 8, generator=g)
    ctx = torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    return x, torch.tensor([7.0, 640.0]), ctx, mask


VIDEO = {
    "stdit-v1.0": dict(temporal="inline", temporal_position="sincos_branch"),
    "stdit3": dict(temporal="blocks", temporal_position="rope", fps_conditioning=True),
}


@pytest.mark.parametrize("layout", ["stdit-v1.0", "stdit3"])
def test_image_to_video_hand_off_is_the_identity(tmp_path, layout):
    image = _trained_image_model()
    torch.save({"state_dict": {f"denoiser.{k}": v for k, v in image.state_dict().items()}, "global_step": 7},
               tmp_path / "phase1.ckpt")
    torch.manual_seed(1)
    video = STDiT(**TINY, **VIDEO[layout]).eval()
    report = init_from(video, str(tmp_path / "phase1.ckpt"), verbose=False)
    assert not report.unexpected and not report.mismatched
    assert len(report.carried) == len(image.state_dict())
    assert report.new and all("temporal" in k or "attn_temp" in k or "fps_embedder" in k for k in report.new)
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        want = image(x, t, ctx, mask)  # temporal="none": every frame on its own
        got = video(x, t, ctx, mask)
        assert torch.equal(got, want)
        # companion: once the new temporal layers are not the identity, the outputs differ
        for k, p in video.named_parameters():
            if k in report.new:
                p.normal_(0, 0.3)
        assert (video(x, t, ctx, mask) - want).abs().max() > 1e-3


def test_image_to_video_hand_off_with_3d_rope_is_the_identity(tmp_path):
    kw = dict(TINY, position="rope_3d", temporal_position="none")
    image = STDiT(**kw, temporal="none").eval()
    with torch.no_grad():
        for p in image.parameters():
            p.normal_(0, 0.3)
    video = STDiT(**kw, temporal="blocks").eval()
    load_weights(video, image.state_dict())
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(video(x, t, ctx, mask), image(x, t, ctx, mask))


def test_latte_layout_is_not_an_identity_hand_off(tmp_path):
    """Latte adds its frame code to the tokens themselves: documented as the exception."""
    image = _trained_image_model()
    video = STDiT(**TINY, temporal="blocks", temporal_position="sincos_stream").eval()
    load_weights(video, image.state_dict())
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        assert not torch.equal(video(x, t, ctx, mask), image(x, t, ctx, mask))


def test_ema_raw_exported_and_strict(tmp_path, capsys):
    image = _trained_image_model()
    raw = {f"denoiser.{k}": v for k, v in image.state_dict().items()}
    shadow = {k: v + 1 for k, v in raw.items() if k != "denoiser.null_context"}  # EMA: parameters only
    torch.save({"state_dict": raw, "callbacks": {"EMA": {"shadow": shadow}}, "global_step": 3},
               tmp_path / "last.ckpt")
    model = STDiT(**TINY, temporal="none", temporal_position="none")
    init_from(model, str(tmp_path / "last.ckpt"), weights="ema", strict=True)
    assert torch.equal(model.t_block[1].weight, image.t_block[1].weight + 1)
    assert torch.equal(model.null_context, image.null_context)  # buffers come from the raw state
    assert "EMA weights, step 3" in capsys.readouterr().out
    init_from(model, str(tmp_path / "last.ckpt"), weights="raw", strict=True, verbose=False)
    assert torch.equal(model.t_block[1].weight, image.t_block[1].weight)
    # an exported safetensors file
    save_file({k: v.contiguous() for k, v in shadow.items()} | {"denoiser.null_context": image.null_context},
              str(tmp_path / "ema.safetensors"), metadata={METADATA_KEY: json.dumps({}), "weights": "ema"})
    init_from(model, str(tmp_path / "ema.safetensors"), strict=True, verbose=False)
    assert torch.equal(model.t_block[1].weight, image.t_block[1].weight + 1)
    with pytest.raises(ValueError, match="holds ema weights"):
        init_from(model, str(tmp_path / "ema.safetensors"), weights="raw")
    # strict refuses a model with new layers and says which
    video = STDiT(**TINY, temporal="blocks")
    with pytest.raises(KeyError, match=r"new \(kept their initialisation\): \d+: temporal_blocks"):
        init_from(video, str(tmp_path / "last.ckpt"), strict=True)
    # no EMA in the checkpoint
    torch.save({"state_dict": raw}, tmp_path / "noema.ckpt")
    with pytest.raises(ValueError, match="no EMA weights"):
        init_from(model, str(tmp_path / "noema.ckpt"), weights="ema")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        init_from(model, str(tmp_path / "missing.pth"))


def test_from_a_diffusers_pixart_folder_reports_carried_and_new(tmp_path, capsys):
    torch.manual_seed(0)
    ref = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
                                   num_layers=2, sample_size=8, patch_size=2, caption_channels=12,
                                   cross_attention_dim=24)
    ref.save_pretrained(tmp_path / "pixart")
    video = STDiT(**TINY, temporal="blocks", temporal_position="rope")
    report = init_from(video, str(tmp_path / "pixart"))
    out = capsys.readouterr().out
    assert "diffusers PixArtTransformer2DModel" in out and f"carried {len(report.carried)} tensors" in out
    assert "temporal_blocks.*.attn.qkv.weight (2)" in out
    assert "null_context" in report.new  # PixArt in diffusers has no learned null caption
    assert torch.equal(video.blocks[1].attn.proj.weight, ref.transformer_blocks[1].attn1.to_out[0].weight)


@pytest.mark.parametrize("kind", ["ckpt", "safetensors"])
def test_nonfinite_source_is_refused_naming_file_and_key(tmp_path, kind):
    image = _trained_image_model()
    weights = dict(image.state_dict())
    key = sorted(weights)[3]
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = float("nan")
    if kind == "ckpt":
        path = tmp_path / "diverged.ckpt"
        torch.save({"state_dict": {f"denoiser.{k}": v for k, v in weights.items()}, "global_step": 7}, path)
    else:
        path = tmp_path / "diverged.safetensors"
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    target = _trained_image_model(seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{path.name}.*non-finite.* {key}"):
        init_from(target, str(path), verbose=False)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing was loaded


def test_init_from_callback_refuses_nonfinite_weights(tmp_path):
    import lightning as L

    from lvdm.training.callbacks.warm_start import InitFrom

    image = _trained_image_model()
    sd = {f"denoiser.{k}": v.clone() for k, v in image.state_dict().items()}
    first = next(iter(sd))
    sd[first].view(-1)[-1] = float("inf")
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "phase1.ckpt")
    module = L.LightningModule()
    module.denoiser = _trained_image_model(seed=1)
    with pytest.raises(ValueError, match=rf"phase1.ckpt.*{first[len('denoiser.'):]}"):
        InitFrom(str(tmp_path / "phase1.ckpt")).setup(None, module, "fit")
