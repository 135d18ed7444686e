"""lvdm STDiT vs diffusers PixArt-α and Latte with converted weights (float32, tiny configs)."""

import pytest
import torch
from diffusers import LatteTransformer3DModel, PixArtTransformer2DModel

from lvdm.models.convert import latte, pixart
from lvdm.models.stdit import STDiT

TOL = 1e-5


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (diffusers inits some tensors to constants)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _pixart(**overrides) -> PixArtTransformer2DModel:
    config = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
                  sample_size=8, patch_size=2, caption_channels=20, cross_attention_dim=24)
    config.update(overrides)
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**config).eval()
    _randomise(model)
    return model


def _text(b: int, length: int = 7, dim: int = 20):
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(b, length, dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 4:] = False  # padded caption
    if b > 1:
        mask[1, 6:] = False
    return ctx, mask


def _lvdm_from(ref, module) -> STDiT:
    model = STDiT(**module.stdit_kwargs(ref.config)).eval()
    model.load_state_dict(module.convert_state_dict(ref.state_dict()), strict=True)
    return model


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
@pytest.mark.parametrize("micro", [False, True])
def test_pixart_parity(size, micro):
    ref = _pixart(use_additional_conditions=micro)
    model = _lvdm_from(ref, pixart)
    assert model.size_conditioning == micro and model.out_channels == 8
    h, w = size
    x = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3.0, 917.0])
    ctx, mask = _text(2)
    resolution = torch.tensor([[h * 8.0, w * 8.0]] * 2)
    aspect = torch.tensor([[h / w]] * 2)
    cond = {"resolution": resolution, "aspect_ratio": aspect} if micro else {}
    with torch.no_grad():
        want = ref(x, encoder_hidden_states=ctx, encoder_attention_mask=mask.float(), timestep=t,
                   added_cond_kwargs=cond or {"resolution": None, "aspect_ratio": None}).sample
        got = model(x[:, :, None], t, ctx, mask, **cond)[:, :, 0]
    assert got.shape == (2, 4, h, w)
    assert (got - want[:, :4]).abs().max() < TOL
    # the micro-conditions derived from the latent size equal the explicit ones (latent_scale 8)
    if micro:
        with torch.no_grad():
            assert (model(x[:, :, None], t, ctx, mask)[:, :, 0] - got).abs().max() < TOL


def test_pixart_parity_fails_without_the_differences():
    """Companion check: the test can fail — a DiT-style [h | w] code or a cross-attention norm breaks it."""
    ref = _pixart()
    model = _lvdm_from(ref, pixart)
    x = torch.randn(1, 4, 1, 6, 10)
    ctx, mask = _text(1)
    t = torch.tensor([500.0])
    with torch.no_grad():
        want = ref(x[:, :, 0], encoder_hidden_states=ctx, encoder_attention_mask=mask.float(), timestep=t,
                   added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample[:, :4]
        model.base_size = None  # positions 0..n-1 instead of the base-grid stretch
        assert (model(x, t, ctx, mask)[:, :, 0] - want).abs().max() > 1e-3


def test_latte_converter_refuses_other_norms():
    with pytest.raises(ValueError, match="norm_type='layer_norm' is not supported"):
        latte.stdit_kwargs(dict(_latte().config, norm_type="layer_norm"))


def test_pixart_converter_refuses_unknown_weights():
    sd = _pixart().state_dict()
    sd["transformer_blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="no place in STDiT"):
        pixart.convert_state_dict(sd)


def _latte(**overrides) -> LatteTransformer3DModel:
    config = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                  sample_size=8, patch_size=2, caption_channels=20, cross_attention_dim=16, video_length=3,
                  norm_type="ada_norm_single", activation_fn="gelu-approximate", norm_elementwise_affine=False,
                  norm_eps=1e-6, attention_bias=True)  # Latte-1's published options (the class defaults differ)
    config.update(overrides)
    torch.manual_seed(0)
    model = LatteTransformer3DModel(**config).eval()
    _randomise(model)
    return model


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_latte_parity(size):
    ref = _latte()
    model = _lvdm_from(ref, latte)
    h, w = size
    x = torch.randn(2, 4, 3, h, w, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3.0, 917.0])
    ctx, _ = _text(2)
    with torch.no_grad():
        want = ref(x, timestep=t, encoder_hidden_states=ctx).sample
        got = model(x, t, ctx)
    assert got.shape == (2, 4, 3, h, w)
    assert (got - want[:, :4]).abs().max() < TOL


def test_latte_single_frame_and_image_mode_agree_with_diffusers():
    """One frame: Latte adds no frame code; the temporal block over one frame still runs."""
    ref = _latte(video_length=1)
    model = _lvdm_from(ref, latte)
    x = torch.randn(1, 4, 1, 6, 8)
    ctx, _ = _text(1)
    t = torch.tensor([10.0])
    with torch.no_grad():
        want = ref(x, timestep=t, encoder_hidden_states=ctx).sample[:, :4]
        assert (model(x, t, ctx) - want).abs().max() < TOL


def test_from_diffusers_reads_model_and_pipeline_folders(tmp_path):
    import json

    from lvdm.models.presets import from_diffusers

    ref = _latte()
    ref.save_pretrained(tmp_path / "pipe" / "transformer")  # a pipeline folder: model in transformer/
    model = from_diffusers(str(tmp_path / "pipe")).eval()
    x = torch.randn(1, 4, 3, 8, 8)
    ctx, _ = _text(1)
    t = torch.tensor([42.0])
    with torch.no_grad():
        assert (model(x, t, ctx) - ref(x, timestep=t, encoder_hidden_states=ctx).sample[:, :4]).abs().max() < TOL
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        from_diffusers(str(tmp_path / "unet"))
    with pytest.raises(FileNotFoundError, match="not a diffusers model folder"):
        from_diffusers(str(tmp_path))  # a folder with neither config.json nor transformer/config.json
