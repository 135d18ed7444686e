"""Published DiTs by name, and loading their weights.

:func:`preset` builds an :class:`~lvdm.models.stdit.STDiT` with the architecture of a
published model (optionally resized or with temporal layers added, for tiny tests and phase
hand-offs); :func:`from_diffusers` and :func:`from_opensora` load published weights into it.
From a recipe::

    denoiser:
      class_path: lvdm.models.presets.preset
      init_args: {name: opensora-v1.2-stdit3-xl2}

Loading never runs code from the checkpoint: ``.pth`` files are read with
``torch.load(weights_only=True)``, diffusers folders through diffusers' own (safetensors) loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import torch

from lvdm.models.stdit import STDiT, Temporal, TemporalPosition

_XL = dict(in_channels=4, pred_sigma=True, patch_size=(1, 2, 2), hidden_size=1152, depth=28, num_heads=16,
           context_dim=4096)
_IMAGE = dict(temporal="none", temporal_position="none")

#: name → STDiT arguments. PixArt-α's base grid is its training grid (sample_size / patch) and
#: its interpolation scale {256: 0.5, 512: 1, 1024: 2}; Open-Sora 1.0's ``space_scale`` (0.5 at
#: 256 px) makes its 16×16 grid span PixArt-α 512's position range.
PRESETS: dict[str, dict[str, Any]] = {
    "pixart-alpha-xl2-256": dict(_XL, **_IMAGE, context_length=120, base_size=16, interpolation_scale=0.5),
    "pixart-alpha-xl2-512": dict(_XL, **_IMAGE, context_length=120, base_size=32, interpolation_scale=1.0),
    "pixart-alpha-xl2-1024": dict(_XL, **_IMAGE, context_length=120, base_size=64, interpolation_scale=2.0,
                                  size_conditioning=True),
    "opensora-v1.0-stdit-xl2": dict(_XL, context_length=120, temporal="inline", temporal_position="sincos_branch",
                                    base_size=None, interpolation_scale=0.5),
    "opensora-v1.0-stdit-xl2-512": dict(_XL, context_length=120, temporal="inline",
                                        temporal_position="sincos_branch", base_size=None, interpolation_scale=1.0),
    "opensora-v1.2-stdit3-xl2": dict(_XL, context_length=300, temporal="blocks", temporal_cross_attention=True,
                                     temporal_position="rope", qk_norm=True, fps_conditioning=True,
                                     resolution_scale=512),
    "latte-1": dict(_XL, context_length=0, temporal="blocks", temporal_cross_attention=False,
                    temporal_position="sincos_stream", base_size=32, interpolation_scale=1.0),
}

PresetName = Literal[
    "pixart-alpha-xl2-256", "pixart-alpha-xl2-512", "pixart-alpha-xl2-1024", "opensora-v1.0-stdit-xl2",
    "opensora-v1.0-stdit-xl2-512", "opensora-v1.2-stdit3-xl2", "latte-1",
]


def preset_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The STDiT arguments of preset ``name`` with ``overrides`` (None values ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    kwargs = dict(PRESETS[name])
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return kwargs


def preset(
    name: PresetName,
    in_channels: Optional[int] = None,
    pred_sigma: Optional[bool] = None,
    patch_size: Optional[Sequence[int]] = None,
    hidden_size: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    context_dim: Optional[int] = None,
    context_length: Optional[int] = None,
    temporal: Optional[Temporal] = None,
    temporal_position: Optional[TemporalPosition] = None,
    base_size: Optional[int] = None,
    interpolation_scale: Optional[float] = None,
    fps_conditioning: Optional[bool] = None,
    latent_scale: Optional[int] = None,
) -> STDiT:
    """Build the published architecture ``name`` (random weights; load them with
    ``init_from`` or :func:`from_diffusers` / :func:`from_opensora`).

    Every other argument overrides the preset when given: sizes for a tiny model of the same
    layout, or ``temporal`` / ``temporal_position`` to turn an image preset into a video
    model (phase 2 from PixArt-α)."""
    return STDiT(**preset_kwargs(
        name, in_channels=in_channels, pred_sigma=pred_sigma, patch_size=patch_size, hidden_size=hidden_size,
        depth=depth, num_heads=num_heads, context_dim=context_dim, context_length=context_length,
        temporal=temporal, temporal_position=temporal_position, base_size=base_size,
        interpolation_scale=interpolation_scale, fps_conditioning=fps_conditioning, latent_scale=latent_scale,
    ))


# ------------------------------------------------------------------------------------- loading
def _diffusers_folder(path: str) -> tuple[str, Optional[str]]:
    """(path, subfolder): a pipeline folder's model lives in ``transformer/``."""
    if (Path(path) / "transformer" / "config.json").is_file():
        return path, "transformer"
    return path, None


def read_diffusers(path_or_id: str, subfolder: Optional[str] = None) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config, state dict, class name) of a diffusers PixArt-α or Latte transformer, from a
    local folder (a model folder or a pipeline folder with ``transformer/``) or, when no such
    folder exists, a Hugging Face hub id (downloaded by diffusers)."""
    from diffusers import LatteTransformer3DModel, PixArtTransformer2DModel

    classes = {"PixArtTransformer2DModel": PixArtTransformer2DModel, "LatteTransformer3DModel": LatteTransformer3DModel}
    local = Path(path_or_id).exists()
    if local and subfolder is None:
        path_or_id, subfolder = _diffusers_folder(path_or_id)
    if local:
        config_file = Path(path_or_id, subfolder or "", "config.json")
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} does not exist: not a diffusers model folder")
        name = json.loads(config_file.read_text()).get("_class_name")
    else:
        from diffusers.configuration_utils import ConfigMixin

        name = ConfigMixin.load_config(path_or_id, subfolder=subfolder).get("_class_name")
    if name not in classes:
        raise ValueError(f"{path_or_id}: a {name!r} model; lvdm converts {sorted(classes)}")
    model = classes[name].from_pretrained(path_or_id, subfolder=subfolder, local_files_only=local,
                                          torch_dtype=torch.float32)
    return dict(model.config), model.state_dict(), name


def convert_diffusers(config: Mapping, state_dict: Mapping[str, torch.Tensor], class_name: str):
    """(STDiT arguments, STDiT state dict) of a diffusers PixArt-α / Latte model."""
    from lvdm.models.convert import latte, pixart

    module = pixart if class_name == "PixArtTransformer2DModel" else latte
    return module.stdit_kwargs(config), module.convert_state_dict(state_dict)


def from_diffusers(path_or_id: str, subfolder: Optional[str] = None, **overrides: Any) -> STDiT:
    """An STDiT with the architecture and weights of a diffusers PixArt-α or Latte model
    (local folder or hub id). ``overrides`` change constructor arguments that do not alter
    the weights' shapes (e.g. ``latent_scale``)."""
    config, sd, name = read_diffusers(path_or_id, subfolder)
    kwargs, converted = convert_diffusers(config, sd, name)
    model = STDiT(**{**kwargs, **overrides})
    model.load_state_dict(converted, strict=True)
    return model


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``
    file (``torch.load(weights_only=True)``: no code in the file runs)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, or a pickle that needs code to load
        raise ValueError(f"cannot read {path!r} as weights (torch.load weights_only=True): {err}") from err


def from_opensora(path: str, name: PresetName, **overrides: Any) -> STDiT:
    """Preset ``name`` with the weights of an Open-Sora / PixArt-α checkpoint file
    (``.pth`` or ``.safetensors``), loaded strictly."""
    from lvdm.models.convert import opensora

    model = preset(name, **overrides)
    converted = opensora.convert_state_dict(opensora.unwrap(read_weights(path), path), model)
    model.load_state_dict(converted, strict=True)
    return model
