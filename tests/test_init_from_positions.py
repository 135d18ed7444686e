"""init_from refuses a source trained under other fixed position settings (position code kind,
grid, interpolation scale, timestep frequencies): its weights load, even strictly, and silently
give another model. The source's settings come from its stored recipe or diffusers config."""

import json

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

from lvdm.checkpoints.load import INSTANTIATOR, METADATA_KEY
from lvdm.checkpoints.init_from import init_from
from lvdm.models.contract import fixed_position_settings
from lvdm.models.dit import DiT
from lvdm.models.stdit import STDiT

DIT = dict(in_channels=3, patch_size=[1, 2, 2], hidden_size=32, depth=1, num_heads=2, conditioning="cross_attn",
           context_dim=16)
STDIT = dict(in_channels=4, hidden_size=24, depth=1, num_heads=2, context_dim=12, context_length=5, base_size=4,
             temporal="none", temporal_position="none")


def _recipe(class_path: str, init_args: dict) -> dict:
    """A checkpoint's stored recipe (``hyper_parameters`` under the lvdm CLI)."""
    return {"_class_path": "lvdm.training.module.LatentDiffusionModule", "_instantiator": INSTANTIATOR,
            "denoiser": {"class_path": class_path, "init_args": init_args}}


def _ckpt(tmp_path, model, hparams) -> str:
    path = tmp_path / "source.ckpt"
    state = {f"denoiser.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 5, **({"hyper_parameters": hparams} if hparams else {})}, path)
    return str(path)


def _dit(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(**{**DIT, **kw}).eval()


@pytest.mark.parametrize("setting, source, target", [
    ("position", "sincos_3d", "sincos_2d"),
    ("timestep_freq_shift", 1.0, 0.0),
])
def test_a_dit_checkpoint_with_other_position_settings_is_refused(tmp_path, setting, source, target):
    path = _ckpt(tmp_path, _dit(**{setting: source}), _recipe("lvdm.models.dit.DiT", {**DIT, setting: source}))
    model = _dit(**{setting: target})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"its {setting} is {source!r}, the model's is {target!r}.*"
                                         rf"{setting}={source!r}.*allow_position_change=True"):
        init_from(model, path, strict=True, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded
    # the same settings load; a meant change loads when allowed
    init_from(_dit(**{setting: source}), path, strict=True, verbose=False)
    report = init_from(model, path, strict=True, verbose=False, allow_position_change=True)
    assert not report.new and not report.mismatched


def test_why_a_strict_load_is_not_enough():
    """Companion: the same weights under another setting give another model."""
    a, b = _dit(timestep_freq_shift=1.0), _dit()
    x, t, ctx = torch.randn(1, 3, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 16)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 0.2)
        b.load_state_dict(a.state_dict(), strict=True)
        assert (a(x, t, ctx) - b(x, t, ctx)).abs().max() > 1e-3


def test_an_exported_stdit_with_another_interpolation_scale_is_refused(tmp_path):
    torch.manual_seed(0)
    source = STDiT(**STDIT, interpolation_scale=0.5)
    save_file({f"denoiser.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "x.safetensors"),
              metadata={METADATA_KEY: json.dumps(_recipe("lvdm.models.stdit.STDiT", {**STDIT, "interpolation_scale": 0.5})),
                        "weights": "raw"})
    with pytest.raises(ValueError, match=r"x.safetensors .*its interpolation_scale is 0.5, the model's is 1.0"):
        init_from(STDiT(**STDIT, interpolation_scale=1.0), str(tmp_path / "x.safetensors"), verbose=False)
    init_from(STDiT(**STDIT, interpolation_scale=0.5), str(tmp_path / "x.safetensors"), strict=True, verbose=False)


def test_a_diffusers_folder_is_checked_against_its_config(tmp_path):
    torch.manual_seed(0)
    PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
                             num_layers=1, sample_size=8, patch_size=2, caption_channels=12,
                             cross_attention_dim=24).save_pretrained(tmp_path / "pixart")
    # sample_size 8 / patch 2: base grid 4 (PixArt's), so a model with base_size 8 is refused
    with pytest.raises(ValueError, match="its base_size is 4, the model's is 8"):
        init_from(STDiT(**{**STDIT, "base_size": 8}), str(tmp_path / "pixart"), verbose=False)
    init_from(STDiT(**STDIT), str(tmp_path / "pixart"), verbose=False)


def test_sources_without_a_recipe_are_not_checked(tmp_path):
    """A module built in Python stores no denoiser recipe: its settings are unknown, it loads."""
    path = _ckpt(tmp_path, _dit(position="sincos_3d"), hparams={"caption_dropout": 0.1})
    init_from(_dit(position="sincos_2d"), path, strict=True, verbose=False)


def test_backbones_declare_their_fixed_position_settings():
    assert fixed_position_settings(_dit(timestep_freq_shift=1.0)) == {
        "position": "sincos_3d", "base_grid": None, "timestep_freq_shift": 1.0}
    assert fixed_position_settings(STDiT(**STDIT)) == {
        "position": "sincos_2d", "base_size": 4, "interpolation_scale": 1.0, "resolution_scale": None}


def test_a_whole_module_load_checks_its_denoiser(tmp_path):
    """``InitFrom(module="", prefix="")`` (a phase hand-off of the whole module): the recipe's
    denoiser is compared with the module's."""
    from lvdm.training.module import LatentDiffusionModule
    from lvdm.text.words import WordTextEncoder

    def module(shift):
        return LatentDiffusionModule(_dit(timestep_freq_shift=shift), WordTextEncoder(dim=16, max_length=4))

    path = tmp_path / "whole.ckpt"
    torch.save({"state_dict": module(1.0).state_dict(),
                "hyper_parameters": _recipe("lvdm.models.dit.DiT", {**DIT, "timestep_freq_shift": 1.0})}, path)
    with pytest.raises(ValueError, match="its timestep_freq_shift is 1.0, the model's is 0.0"):
        init_from(module(0.0), str(path), prefix="", verbose=False)
    init_from(module(1.0), str(path), prefix="", strict=True, verbose=False)
