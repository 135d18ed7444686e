"""Published DiTs by name, and loading their weights.

:func:`preset` builds an :class:`~lvdm.models.stdit.STDiT` with the architecture of a
published model (optionally resized or with temporal layers added, for tiny tests and phase
hand-offs); :func:`from_diffusers` and :func:`from_opensora` load published weights into it
(:func:`from_diffusers` also HunyuanVideo's into an :class:`~lvdm.models.mmdit.MMDiT`, and
:func:`from_opensora2` Open-Sora 2.0's, :func:`from_hunyuan_original` Tencent's original HunyuanVideo
file; :func:`from_wan_original` the Wan repository's own file into a Wan preset; :func:`from_diffusers_wan` a diffusers Wan 2.1 folder into a
:class:`~lvdm.models.diffusers_adapter.WanBackbone`, :func:`from_diffusers_wan_experts` a Wan 2.2 A14B one into
:class:`~lvdm.models.diffusers_adapter.WanExperts`, :func:`from_diffusers_ltx` an LTX-Video one into an
:class:`~lvdm.models.diffusers_adapter.LTXBackbone`).
From a recipe::

    denoiser:
      class_path: lvdm.models.presets.preset
      init_args: {name: opensora-v1.2-stdit3-xl2}

and :func:`published` builds the MMDiT and diffusers-backed presets so (``name: opensora-2.0``,
``wan2.1-t2v-1.3b``…; recipes/opensora2/, recipes/wan/).

:func:`from_name` gives the whole :class:`Preset` of every published configuration (DiT S…XL,
DiT-ImageNet, PixArt-α, Latte, Open-Sora 1.0 / 1.2, HunyuanVideo and Open-Sora 2.0 (:class:`~lvdm.models.mmdit.MMDiT`),
Wan 2.1 T2V 1.3B / 14B and I2V 14B, Wan 2.2 T2V A14B, LTX-Video 2B and CogVideoX 2B / 5B (diffusers' transformers, :mod:`lvdm.models.diffusers_adapter`)): its source, parameter count, architecture
and the way the source samples (:class:`SamplerDefaults`); ``lvdm sample --preset NAME`` samples
with those defaults.

Loading never runs code from the checkpoint: ``.pth`` files are read with
``torch.load(weights_only=True)``, diffusers folders through diffusers' own (safetensors) loader.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional, Sequence

import torch

from lvdm.models.mmdit import MMDiT
from lvdm.models.stdit import STDiT, Temporal, TemporalPosition

if TYPE_CHECKING:
    from lvdm.diffusion.objectives import Objective

_XL = dict(in_channels=4, pred_sigma=True, patch_size=(1, 2, 2), hidden_size=1152, depth=28, num_heads=16,
           context_dim=4096)
_IMAGE = dict(temporal="none", temporal_position="none")

#: name → STDiT arguments. PixArt-α's base grid is its training grid (sample_size / patch) and
#: its interpolation scale {256: 1, 512: 1, 1024: 2} (PixArt-α's ``lewei_scale``; diffusers'
#: ``max(sample_size // 64, 1)``); Open-Sora 1.0's ``space_scale`` (0.5 at
#: 256 px) makes its 16×16 grid span PixArt-α 512's position range.
PRESETS: dict[str, dict[str, Any]] = {
    "pixart-alpha-xl2-256": dict(_XL, **_IMAGE, context_length=120, base_size=16, interpolation_scale=1.0),
    "pixart-alpha-xl2-512": dict(_XL, **_IMAGE, context_length=120, base_size=32, interpolation_scale=1.0),
    "pixart-alpha-xl2-1024": dict(_XL, **_IMAGE, context_length=120, base_size=64, interpolation_scale=2.0,
                                  size_conditioning=True),
    "opensora-v1.0-stdit-xl2": dict(_XL, context_length=120, temporal="inline", temporal_position="sincos_branch",
                                    base_size=None, interpolation_scale=0.5),
    "opensora-v1.0-stdit-xl2-512": dict(_XL, context_length=120, temporal="inline",
                                        temporal_position="sincos_branch", base_size=None, interpolation_scale=1.0),
    "opensora-v1.0-stdit-xl2-64x512": dict(_XL, context_length=120, temporal="inline",
                                           temporal_position="sincos_branch", base_size=None, interpolation_scale=1.0,
                                           time_scale=2 / 3),
    "opensora-v1.2-stdit3-xl2": dict(_XL, context_length=300, temporal="blocks", temporal_cross_attention=True,
                                     temporal_position="rope", qk_norm=True, fps_conditioning=True,
                                     resolution_scale=512),
    "latte-1": dict(_XL, context_length=0, temporal="blocks", temporal_cross_attention=False,
                    temporal_position="sincos_stream", base_size=32, interpolation_scale=1.0),
}

PresetName = Literal[
    "pixart-alpha-xl2-256", "pixart-alpha-xl2-512", "pixart-alpha-xl2-1024", "opensora-v1.0-stdit-xl2",
    "opensora-v1.0-stdit-xl2-512", "opensora-v1.0-stdit-xl2-64x512", "opensora-v1.2-stdit3-xl2", "latte-1",
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
    time_scale: Optional[float] = None,
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
        interpolation_scale=interpolation_scale, time_scale=time_scale, fps_conditioning=fps_conditioning,
        latent_scale=latent_scale,
    ))


#: The presets :func:`published` builds: every MMDiT and diffusers-backed one of :data:`TABLE`.
PublishedName = Literal[
    "hunyuanvideo", "hunyuanvideo-diffusers", "opensora-2.0", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b",
    "wan2.1-i2v-14b-480p", "wan2.2-t2v-a14b", "cogvideox-2b", "cogvideox-5b", "mochi-1-preview", "ltx-video-2b",
]


def published(
    name: PublishedName,
    in_channels: Optional[int] = None,
    patch_size: Optional[Sequence[int]] = None,
    hidden_size: Optional[int] = None,
    num_heads: Optional[int] = None,
    depth_double: Optional[int] = None,
    depth_single: Optional[int] = None,
    context_dim: Optional[int] = None,
    pooled_text_dim: Optional[int] = None,
    image_condition_channels: Optional[int] = None,
    rope_axes_dims: Optional[Sequence[int]] = None,
    num_attention_heads: Optional[int] = None,
    attention_head_dim: Optional[int] = None,
    out_channels: Optional[int] = None,
    ffn_dim: Optional[int] = None,
    num_layers: Optional[int] = None,
    text_dim: Optional[int] = None,
    freq_dim: Optional[int] = None,
    text_length: Optional[int] = None,
) -> torch.nn.Module:
    """Build the published video transformer ``name`` (:func:`from_name`'s MMDiT or diffusers
    backbone, random weights): the recipe ``class_path`` of the MMDiT and diffusers-backed presets,
    as :func:`preset` is the STDiT ones'.

    Every other argument overrides the preset when given (None: the preset's), for tiny variants of
    the same layout: ``in_channels`` … ``rope_axes_dims`` are :class:`~lvdm.models.mmdit.MMDiT`'s,
    ``num_attention_heads`` … ``text_length`` Wan's (:func:`~lvdm.models.diffusers_adapter.build_wan`);
    an argument the backbone lacks fails naming it."""
    given = dict(in_channels=in_channels, patch_size=patch_size, hidden_size=hidden_size, num_heads=num_heads,
                 depth_double=depth_double, depth_single=depth_single, context_dim=context_dim,
                 pooled_text_dim=pooled_text_dim, image_condition_channels=image_condition_channels,
                 rope_axes_dims=rope_axes_dims, num_attention_heads=num_attention_heads,
                 attention_head_dim=attention_head_dim, out_channels=out_channels, ffn_dim=ffn_dim,
                 num_layers=num_layers, text_dim=text_dim, freq_dim=freq_dim, text_length=text_length)
    entry = from_name(name)
    overrides = {k: v for k, v in given.items() if v is not None}
    if entry.backbone == "MMDiT":
        known = set(inspect.signature(MMDiT).parameters)
    else:
        from lvdm.models import diffusers_adapter

        known = set(inspect.signature(getattr(diffusers_adapter, _ADAPTER_BUILDERS[entry.backbone])).parameters)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"published({name!r}): {unknown} are not arguments of its {entry.backbone}; "
                         f"it takes {sorted(known & set(given))}")
    return entry.build(**overrides)


# ------------------------------------------------------------------------------------- loading
def _diffusers_folder(path: str) -> tuple[str, Optional[str]]:
    """(path, subfolder): a pipeline folder's model lives in ``transformer/``."""
    if (Path(path) / "transformer" / "config.json").is_file():
        return path, "transformer"
    return path, None


def read_diffusers(path_or_id: str, subfolder: Optional[str] = None) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config, state dict, class name) of a diffusers PixArt-α, Latte or HunyuanVideo transformer,
    from a local folder (a model folder or a pipeline folder with ``transformer/``) or, when no
    such folder exists, a Hugging Face hub id (downloaded by diffusers)."""
    from diffusers import HunyuanVideoTransformer3DModel, LatteTransformer3DModel, PixArtTransformer2DModel

    classes = {"PixArtTransformer2DModel": PixArtTransformer2DModel, "LatteTransformer3DModel": LatteTransformer3DModel,
               "HunyuanVideoTransformer3DModel": HunyuanVideoTransformer3DModel}
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
    """(STDiT arguments, STDiT state dict) of a diffusers PixArt-α / Latte model; (MMDiT
    arguments, MMDiT state dict) of a HunyuanVideo one."""
    from lvdm.models.convert import hunyuan, latte, pixart

    if class_name == "HunyuanVideoTransformer3DModel":
        return hunyuan.mmdit_kwargs(config), hunyuan.convert_state_dict(state_dict)
    module = pixart if class_name == "PixArtTransformer2DModel" else latte
    return module.stdit_kwargs(config), module.convert_state_dict(state_dict)


def from_diffusers(path_or_id: str, subfolder: Optional[str] = None, **overrides: Any) -> STDiT | MMDiT:
    """An STDiT with the architecture and weights of a diffusers PixArt-α or Latte model, or an
    :class:`~lvdm.models.mmdit.MMDiT` with those of a HunyuanVideo one (local folder or hub id).
    ``overrides`` change constructor arguments that do not alter the weights' shapes (e.g.
    ``latent_scale``)."""
    config, sd, name = read_diffusers(path_or_id, subfolder)
    kwargs, converted = convert_diffusers(config, sd, name)
    model = (MMDiT if name == "HunyuanVideoTransformer3DModel" else STDiT)(**{**kwargs, **overrides})
    model.load_state_dict(converted, strict=True)
    return model


def _is_hub_id(path_or_id: str) -> bool:
    """``owner/name`` (one slash, not a path that starts with ``/``, ``.`` or ``~``)."""
    return path_or_id.count("/") == 1 and not path_or_id.startswith(("/", ".", "~"))


def _load_diffusers_transformer(cls: type, path_or_id: str, subfolder: Optional[str], loader: str):
    """A diffusers transformer of class ``cls`` from a local folder (a model folder or a pipeline
    folder with ``transformer/``) or a hub id, weights only (safetensors, float32), strictly: a
    missing, unexpected or mis-shaped key is an error naming them (diffusers only warns, and
    initialises what is missing at random)."""
    local = not _is_hub_id(path_or_id) or Path(path_or_id).exists()
    if local:
        if subfolder is None:
            path_or_id, subfolder = _diffusers_folder(path_or_id)
        config_file = Path(path_or_id, subfolder or "", "config.json")
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} does not exist: not a diffusers model folder")
        name = json.loads(config_file.read_text()).get("_class_name")
        if name != cls.__name__:
            raise ValueError(f"{config_file}: a {name!r} model; {loader} loads {cls.__name__!r}")
    transformer, info = cls.from_pretrained(
        path_or_id, subfolder=subfolder, local_files_only=local, use_safetensors=True, torch_dtype=torch.float32,
        output_loading_info=True)
    report = {kind: list(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(report.values()):
        raise ValueError(f"{path_or_id}: the weights do not match {cls.__name__}'s config: " +
                         "; ".join(f"{kind} {keys[:5]}{' …' if len(keys) > 5 else ''} ({len(keys)})"
                                   for kind, keys in report.items() if keys))
    return transformer


def from_diffusers_wan(path_or_id: str, subfolder: Optional[str] = None, text_length: Optional[int] = 512):
    """A :class:`~lvdm.models.diffusers_adapter.WanBackbone` around diffusers'
    ``WanTransformer3DModel`` loaded from a local folder (a model folder or a pipeline folder
    with ``transformer/``) or a Hugging Face hub id, weights only (safetensors, float32), strictly:
    a missing, unexpected or mis-shaped key is an error naming them. ``text_length``: the caption length
    the umT5 tokens are zero-padded to (Wan: 512)."""
    from diffusers import WanTransformer3DModel

    from lvdm.models.diffusers_adapter import WanBackbone

    transformer = _load_diffusers_transformer(WanTransformer3DModel, path_or_id, subfolder, "from_diffusers_wan")
    return WanBackbone(transformer, text_length)


def from_diffusers_wan_experts(path: str, boundary_ratio: Optional[float] = None, text_length: Optional[int] = 512):
    """A :class:`~lvdm.models.diffusers_adapter.WanExperts` from a local Wan 2.2 A14B pipeline folder:
    ``transformer/`` (high noise) and ``transformer_2/`` (low noise), each loaded as
    :func:`from_diffusers_wan` loads one; ``boundary_ratio`` None: the folder's ``model_index.json``."""
    from lvdm.models.diffusers_adapter import WanExperts

    if boundary_ratio is None:
        index = Path(path, "model_index.json")
        if not index.is_file():
            raise FileNotFoundError(f"{index} does not exist: not a diffusers pipeline folder (or give boundary_ratio)")
        boundary_ratio = json.loads(index.read_text()).get("boundary_ratio")
        if boundary_ratio is None:
            raise ValueError(f"{index} has no boundary_ratio: a one-transformer Wan (use from_diffusers_wan)")
    high, low = (from_diffusers_wan(path, sub, text_length) for sub in ("transformer", "transformer_2"))
    return WanExperts(high, low, float(boundary_ratio))


def from_diffusers_ltx(path_or_id: str, subfolder: Optional[str] = None, frame_rate: float = 25.0,
                       compression: Sequence[int] = (8, 32, 32)):
    """A :class:`~lvdm.models.diffusers_adapter.LTXBackbone` around diffusers'
    ``LTXVideoTransformer3DModel`` loaded as :func:`from_diffusers_wan` loads Wan's (local folder
    or hub id, weights only, strict key report). ``frame_rate`` and ``compression``: the RoPE
    scale's inputs (LTXPipeline's ``frame_rate`` 25 and LTX-Video's VAE compression)."""
    from diffusers import LTXVideoTransformer3DModel

    from lvdm.models.diffusers_adapter import LTXBackbone

    transformer = _load_diffusers_transformer(LTXVideoTransformer3DModel, path_or_id, subfolder, "from_diffusers_ltx")
    return LTXBackbone(transformer, frame_rate, compression)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``
    file (``torch.load(weights_only=True)``: no code in the file runs)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # truncated or not a safetensors file
            raise ValueError(f"cannot read {path!r} as safetensors weights: {err}") from err
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


def from_opensora2(path: str, **overrides: Any) -> MMDiT:
    """The ``opensora-2.0`` preset with the weights of Open-Sora 2.0's checkpoint file
    (``Open_Sora_v2.safetensors``), loaded strictly (``overrides``: sizes of a tiny variant)."""
    from lvdm.models.convert import opensora2

    model = from_name("opensora-2.0").build(**overrides)
    model.load_state_dict(opensora2.convert_state_dict(read_weights(path), model.state_dict()), strict=True)
    return model


def _load_strict(model, convert, sd: Mapping[str, torch.Tensor], path: str, prefix: str = ""):
    """``model`` with ``convert(sd, expected)``'s weights (``prefix``: where they sit in ``model``);
    the converter's strict key report raised as one line naming ``path``."""
    expected = {k.removeprefix(prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)}
    try:
        converted = convert(sd, expected)
    except KeyError as err:
        raise ValueError(f"{path}: {err.args[0]}") from None
    model.load_state_dict({prefix + k: v for k, v in converted.items()}, strict=True)
    return model


def from_hunyuan_original(path: str, **overrides: Any) -> MMDiT:
    """The ``hunyuanvideo`` preset with the weights of Tencent's original transformer file
    (``mp_rank_00_model_states.pt``, whose weights sit under ``"module"``, read with
    ``torch.load(weights_only=True)``; or a ``.safetensors``), loaded strictly: a missing, unexpected
    or mis-shaped weight is an error naming the file and the weights (``overrides``: sizes of a
    tiny variant). Names: :mod:`lvdm.models.convert.hunyuan_original`."""
    from lvdm.models.convert import hunyuan_original, opensora

    sd = opensora.unwrap(read_weights(path), path)  # DeepSpeed's model_states file: the weights under "module"
    return _load_strict(from_name("hunyuanvideo").build(**overrides), hunyuan_original.convert_state_dict, sd, path)


def read_sharded(path: str) -> dict[str, torch.Tensor]:
    """The weights of one ``.safetensors`` file, or of the shards a ``*.safetensors.index.json``
    lists (its ``weight_map``); a folder: its ``diffusion_pytorch_model.safetensors`` or that
    file's index."""
    p = Path(path)
    if p.is_dir():
        found = [p / f"diffusion_pytorch_model.safetensors{end}" for end in ("", ".index.json")]
        if not any(f.is_file() for f in found):
            raise FileNotFoundError(f"{path} holds neither {found[0].name} nor {found[1].name}")
        p = next(f for f in found if f.is_file())
    if not p.name.endswith(".index.json"):
        return read_weights(str(p))
    try:
        shards = sorted(set(json.loads(p.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"{p}: not a safetensors index (a JSON with a weight_map): {err}") from None
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        sd.update(read_weights(str(p.parent / shard)))
    return sd


def from_wan_original(path: str, preset_name: str = "wan2.1-t2v-1.3b", **overrides: Any):
    """The Wan preset ``preset_name`` with the weights of the Wan repository's own checkpoint
    (``diffusion_pytorch_model.safetensors``, a sharded one's ``.index.json``, or the folder holding
    either), loaded strictly: a missing, unexpected or mis-shaped weight is an error naming the
    file and the weights (``overrides``: sizes of a tiny variant, ``text_length``). Names:
    :mod:`lvdm.models.convert.wan_original`."""
    from lvdm.models.convert import wan_original

    chosen = from_name(preset_name)
    if chosen.backbone != "WanBackbone":
        raise ValueError(f"from_wan_original loads a Wan preset; {preset_name!r} is a {chosen.backbone}")
    sd = read_sharded(path)
    return _load_strict(chosen.build(**overrides), wan_original.convert_state_dict, sd, path, "transformer.")


# ------------------------------------------------------------------------------ the preset table
_DDPM = "lvdm.diffusion.objectives.DDPM"
_LINEAR = dict(prediction_type="epsilon", beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
_IMAGENET = dict(in_channels=4, out_channels=8, patch_size=2, num_classes=1000, conditioning="adaln",
                 layout="full", position="sincos_2d")


@dataclass(frozen=True)
class SamplerDefaults:
    """How a published model's source samples, as lvdm reproduces it.

    Args:
        objective: ``(class path, arguments)`` of the lvdm objective (process, target convention,
            shift rule and the sampler with its step count).
        guidance_scale: the source's classifier-free guidance scale.
        null_condition: what the unconditional half sees: ``empty_caption`` (the text encoder's
            ""), ``learned_caption`` (the model's learned null caption, PixArt-α / Open-Sora's
            ``y_embedding``) or ``null_class`` (ImageNet DiT's label ``num_classes``).
        micro_conditions: condition → how the source derives it from the data (lvdm derives
            them so: :meth:`lvdm.training.module.LatentDiffusionModule.micro_conditions`).
        source_sampler: the source's own sampler where lvdm's differs (None: the same).
        fps: the frame rate the source samples videos at and conditions them on (None: the
            model has no fps condition; images are always conditioned on 120).
        negative_prompt: the source's default negative prompt (the unconditional half's caption
            under ``empty_caption``; None: the empty caption).
        text_encoder: ``(class path, arguments)`` of the source's text encoder (an ``lvdm.text``
            class; an argument may itself be such a pair), loaded from the hub ids it names or,
            by :meth:`build_text_encoder`, from one local folder (None: the preset names none).
        size: the source's default ``(frames, height, width)`` in pixels (None: the checkpoint's).
    """

    objective: tuple[str, dict]
    guidance_scale: float
    null_condition: Literal["empty_caption", "learned_caption", "null_class"]
    micro_conditions: Mapping[str, str] = field(default_factory=dict)
    source_sampler: Optional[str] = None
    fps: Optional[float] = None
    negative_prompt: Optional[str] = None
    text_encoder: Optional[tuple[str, dict]] = None
    size: Optional[tuple[int, int, int]] = None

    def build_text_encoder(self, pretrained: Optional[str] = None):
        """The source's text encoder (:attr:`text_encoder`), every ``pretrained`` replaced by
        ``pretrained`` when given (a local folder in the diffusers pipeline layout, or a hub id).
        A local path that does not exist fails at once, naming it."""
        if self.text_encoder is None:
            raise ValueError("this preset names no text encoder; give the module one")
        return _build_text(self.text_encoder, pretrained)

    def build_objective(self) -> Objective:
        """A fresh objective with these defaults."""
        from importlib import import_module

        module, _, name = self.objective[0].rpartition(".")
        return getattr(import_module(module), name)(**self.objective[1])


def _build_text(spec: tuple[str, dict], pretrained: Optional[str]):
    """An ``lvdm.text`` encoder from ``(class path, arguments)``, nested pairs built first."""
    from importlib import import_module

    path, kwargs = spec
    if not path.startswith("lvdm.text."):
        raise ValueError(f"a preset's text encoder must be an lvdm.text class, got {path!r}")
    kwargs = {k: _build_text(v, pretrained) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    if pretrained is not None and "pretrained" in kwargs:
        kwargs["pretrained"] = pretrained
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)(**kwargs)


#: backbone → its builder in :mod:`lvdm.models.diffusers_adapter` (diffusers' transformers).
_ADAPTER_BUILDERS = {"WanBackbone": "build_wan", "WanExperts": "build_wan_experts", "LTXBackbone": "build_ltx",
                     "CogVideoXBackbone": "build_cogvideox", "HunyuanVideoBackbone": "build_hunyuanvideo",
                     "MochiBackbone": "build_mochi"}


@dataclass(frozen=True)
class Preset:
    """One published configuration: ``backbone(**kwargs)`` has ``num_params`` parameters (the
    published count less the fixed codes and null captions lvdm computes or keeps as buffers)."""

    name: str
    source: str
    backbone: Literal["STDiT", "DiT", "MMDiT", "WanBackbone", "WanExperts", "LTXBackbone", "CogVideoXBackbone",
                      "HunyuanVideoBackbone", "MochiBackbone"]
    kwargs: Mapping[str, Any]
    num_params: int
    sampler: SamplerDefaults

    def build(self, **overrides: Any):
        """The architecture with random weights (``overrides`` for tiny variants)."""
        from lvdm.models.dit import DiT

        if self.backbone in _ADAPTER_BUILDERS:  # diffusers' transformer behind the adapter
            from lvdm.models import diffusers_adapter

            return getattr(diffusers_adapter, _ADAPTER_BUILDERS[self.backbone])(**{**self.kwargs, **overrides})
        return {"STDiT": STDiT, "DiT": DiT, "MMDiT": MMDiT}[self.backbone](**{**self.kwargs, **overrides})


def _dit(size: str, weights: str, num_params: int) -> tuple:
    source = f"github.com/facebookresearch/DiT (Peebles & Xie 2023), {weights}"
    return (source, "DiT", dict(_IMAGENET, size=size), num_params, SamplerDefaults(
        (_DDPM, dict(_LINEAR, sampler="ddim", num_sampling_steps=50)), 4.0, "null_class",
        source_sampler="DiT's sample.py: 250 DDPM steps with the learned variance; diffusers' DiTPipeline: "
                       "its folder's scheduler (50 steps) on the ε half, as lvdm"))


def _stdit(name: str, source: str, num_params: int, sampler: SamplerDefaults) -> tuple:
    return (source, "STDiT", PRESETS[name], num_params, sampler)


_PIXART = "github.com/PixArt-alpha/PixArt-alpha (Chen et al. 2023), hf PixArt-alpha/PixArt-XL-2-"
_PIXART_SAMPLER = SamplerDefaults((_DDPM, dict(_LINEAR, sampler="dpm_solver", num_sampling_steps=20)), 4.5,
                                  "learned_caption", source_sampler="diffusers' PixArtAlphaPipeline: T5(\"\") as null")
_PIXART_1024 = SamplerDefaults(_PIXART_SAMPLER.objective, 4.5, "learned_caption", {
    "resolution": "the pixel (height, width) of the clip or the requested sample, not latent x 8",
    "aspect_ratio": "height / width in pixels"}, _PIXART_SAMPLER.source_sampler)
_OS10 = SamplerDefaults((_DDPM, dict(_LINEAR, sampler="ddim", num_sampling_steps=100)), 7.0, "learned_caption",
                        source_sampler="Open-Sora 1.0: IDDPM, 100 steps with the learned variance")
_OS12 = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow",
     dict(target="x0_minus_eps", num_sampling_steps=30, resolution_aware=True, base_area=64 * 64, base_frames=1)),
    7.0, "learned_caption",
    {"fps": "training: a video's frame rate // frame_interval, an image 120; sampling: the requested fps "
            "(24), 120 when num_frames is 1 (Open-Sora's IMG_FPS)",
     "resolution": "the pixel (height, width) of the clip or the requested sample: the position-code scale "
                   "(the timestep shift reads the latent area / 64², Open-Sora's pixel area / 512²)"},
    fps=24.0)
_OS = "github.com/hpcaitech/Open-Sora "

#: HunyuanVideo's transformer (the MMDiT defaults: 3072 wide, 24 heads, 20 double- and 40
#: single-stream blocks, LLaVA-Llama tokens of 4096, CLIP-L pooled 768, RoPE (16, 56, 56), θ 256).
_HUNYUAN = dict(in_channels=16, patch_size=(1, 2, 2), hidden_size=3072, num_heads=24, depth_double=20,
                depth_single=40, mlp_ratio=4.0, context_dim=4096, refiner_depth=2, pooled_text_dim=768,
                guidance_embed=True, rope_theta=256.0, rope_axes_dims=(16, 56, 56))
def _clip_l(pretrained: str, tokenizer: Optional[str] = None, encoder: Optional[str] = None) -> tuple:
    return ("lvdm.text.clip.CLIPTextEncoder", dict(pretrained=pretrained, max_length=77, tokenizer_subfolder=tokenizer,
                                                  encoder_subfolder=encoder))


_HUNYUAN_HUB = "hunyuanvideo-community/HunyuanVideo"
_HUNYUAN_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow", dict(shift=7.0, num_sampling_steps=50, target="eps_minus_x0")),
    1.0, "empty_caption",
    {"guidance": "the distilled guidance scale the model is asked for (6.0), embedded: no classifier-free guidance",
     "pooled_text": "CLIP-L's pooled output of the prompt (77 tokens)"},
    source_sampler="diffusers' HunyuanVideoPipeline: FlowMatchEulerDiscreteScheduler(shift=7.0), 50 steps, "
                   "guidance_scale=6.0 embedded, true_cfg_scale=1.0",
    text_encoder=("lvdm.text.pooled.PooledTextEncoder", dict(
        tokens=("lvdm.text.llava_llama.LlamaPromptTextEncoder", dict(
            pretrained=_HUNYUAN_HUB, max_length=256, crop_start=95, hidden_layer=-3, tokenizer_subfolder="tokenizer",
            encoder_subfolder="text_encoder")),
        pooled=_clip_l(_HUNYUAN_HUB, "tokenizer_2", "text_encoder_2"))),
    size=(129, 720, 1280))

#: Open-Sora 2.0's transformer (configs/diffusion/inference/256px.py: Flux's widths, 19 double- and 38
#: single-stream blocks, T5-XXL tokens unmasked, CLIP-L pooled, RoPE θ 10000, image condition ``cond_in``).
_OPENSORA2 = dict(_HUNYUAN, depth_double=19, depth_single=38, refiner_depth=0, text_mask=False,
                  image_condition_channels=17, guidance_embed=False, rope_theta=10000.0)
_OPENSORA2_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow",
     dict(num_sampling_steps=50, target="eps_minus_x0", shift=1.0, token_shift="opensora2",
          shift_anchors=(256, 1.0, 4096, 3.0), token_patch=(1, 2, 2))),
    7.5, "empty_caption",
    {"pooled_text": "CLIP-L's pooled output of the prompt",
     "image_condition": "mask + masked latents of the given frames (image-to-video); zeros for text-to-video"},
    source_sampler="Open-Sora 2.0 (opensora/utils/sampling.py): 50 Euler steps, its shift linear in the tokens of "
                   "a frame (1 at 256, 3 at 4096) times sqrt(latent frames), as lvdm's; text guidance 7.5 and image "
                   "guidance 3.0 with oscillation (lvdm: plain text guidance); T5-XXL (512 tokens, unmasked) and "
                   "CLIP-L pooled of the prompt, to which Open-Sora appends its motion score",
    text_encoder=("lvdm.text.pooled.PooledTextEncoder", dict(
        tokens=("lvdm.text.t5.T5TextEncoder", dict(pretrained="google/t5-v1_1-xxl", max_length=512)),
        pooled=_clip_l("openai/clip-vit-large-patch14"))),
    size=(129, 256, 256))

#: Wan 2.1 T2V 1.3B (hf Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json = Wan's
#: wan_t2v_1_3B.py: 1536 wide, 12 heads, 30 layers, ffn 8960, umT5 tokens of 4096 zero-padded to 512).
_WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, text_length=512)
#: Wan's shared_config.py sample_neg_prompt (its generate.py and diffusers' examples use it).
_WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                        "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                        "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
_WAN_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow",
     dict(shift=3.0, num_sampling_steps=50, target="eps_minus_x0", sampler="unipc")),
    5.0, "empty_caption", negative_prompt=_WAN_NEGATIVE_PROMPT,
    source_sampler="Wan 2.1 generate.py / diffusers' WanPipeline: UniPC (flow) 50 steps, guidance 5.0, flow shift "
                   "3.0 at 480p and 5.0 at 720p (lvdm: the same UniPC, shift 3.0 unless a recipe says 5.0), umT5 "
                   "tokens zero-padded to 512, 16 fps",
    text_encoder=("lvdm.text.umt5.UMT5TextEncoder", dict(
        pretrained="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", max_length=512, tokenizer_subfolder="tokenizer",
        encoder_subfolder="text_encoder")),
    size=(81, 480, 832))

#: Wan 2.1 14B (hf Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json = Wan's wan_t2v_14B.py: 5120
#: wide, 40 heads, 40 layers, ffn 13824); its I2V (Wan2.1-I2V-14B-480P/720P) adds 20 condition channels
#: (in 36) and CLIP ViT-H/14 tokens (image_dim 1280, 257 tokens; added_kv_proj_dim 5120).
_WAN_14B = dict(_WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
_WAN_I2V_14B = dict(_WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120, image_length=257)
_WAN_GENERATE = "Wan 2.1 generate.py: UniPC (flow) {steps} steps, guidance 5.0, flow shift {shift} (lvdm: Euler, same shift)"
_WAN_14B_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow", dict(shift=5.0, num_sampling_steps=50, target="eps_minus_x0")),
    5.0, "empty_caption", negative_prompt=_WAN_NEGATIVE_PROMPT,
    source_sampler=_WAN_GENERATE.format(steps=50, shift="5.0 (its default, at 480p and 720p)") + ", 16 fps")
_WAN_I2V_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow", dict(shift=3.0, num_sampling_steps=40, target="eps_minus_x0")),
    5.0, "empty_caption",
    {"image_condition": "the mask of the given first frame (4 channels) then its Wan-VAE latents, zeros after",
     "image_embeds": "CLIP ViT-H/14's penultimate hidden states of the given frame (257 tokens)"},
    negative_prompt=_WAN_NEGATIVE_PROMPT,
    source_sampler=_WAN_GENERATE.format(steps=40, shift="3.0 at 480p (5.0 at 720p)"))
#: Wan 2.2 T2V A14B (Wan2.2 wan/configs/wan_t2v_A14B.py): two experts of Wan 2.1 14B's config, the
#: high-noise one above boundary 0.875; shift 12, 40 steps, guidance 4.0 (high) / 3.0 (low).
_WAN22_T2V = dict(_WAN_14B, boundary_ratio=0.875)
_WAN22_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow", dict(shift=12.0, num_sampling_steps=40, target="eps_minus_x0")),
    4.0, "empty_caption", negative_prompt=_WAN_NEGATIVE_PROMPT,
    source_sampler="Wan 2.2 generate.py / diffusers' WanPipeline(boundary_ratio=0.875): UniPC (flow) 40 steps, "
                   "shift 12.0, guidance 4.0 on the high-noise expert and 3.0 on the low-noise one (lvdm: Euler, "
                   "one guidance scale, 4.0)")

#: LTX-Video 0.9.x 2B (hf Lightricks/LTX-Video transformer/config.json = diffusers'
#: LTXVideoTransformer3DModel defaults: 2048 wide, 32 heads, 28 layers, patch 1 on 128 latent channels,
#: T5-XXL tokens of 4096 with their mask, max 128).
_LTX_2B = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=64, num_layers=28,
               caption_channels=4096, frame_rate=25.0, compression=(8, 32, 32))
#: LTXPipeline's dynamic shift: exp(mu), mu linear in the latent token count t·h·w (its scheduler
#: folder's base_shift 0.95 at base_image_seq_len 1024, max_shift 2.05 at max_image_seq_len 4096),
#: then the grid stretched to shift_terminal 0.1 (the hub folder's scheduler_config.json, as ports
#: quote it: not read offline here).
_LTX_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow",
     dict(num_sampling_steps=50, target="eps_minus_x0", token_shift="flux", shift_anchors=(1024, 0.95, 4096, 2.05),
          token_patch=(1, 1, 1), shift_terminal=0.1)),
    3.0, "empty_caption",
    source_sampler="diffusers' LTXPipeline: FlowMatchEulerDiscreteScheduler, 50 steps from sigmas linspace(1, 1/50), "
                   "the dynamic shift and terminal stretch as lvdm's, guidance 3.0, T5 tokens padded to 128 (the "
                   "encoder reads the padding; the transformer gets the mask), frame_rate 25, negative prompt \"\"",
    text_encoder=("lvdm.text.t5.T5TextEncoder", dict(
        pretrained="Lightricks/LTX-Video", max_length=128, tokenizer_subfolder="tokenizer",
        encoder_subfolder="text_encoder", attend_padding=True)),
    size=(161, 512, 704))

#: CogVideoX 1.0 (hf THUDM/CogVideoX-2b and -5b transformer/config.json; 2b = diffusers'
#: CogVideoXTransformer3DModel defaults: 1920 wide, 30 heads, 30 layers, sincos positions; 5b: 3072 wide,
#: 48 heads, 42 layers, RoPE; T5-XXL tokens of 4096 padded to 226, unmasked).
_COGVIDEOX_2B: dict = {}
_COGVIDEOX_5B = dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
#: CogVideoX's chain and sampler (the hub folders' scheduler_config.json: v-prediction, scaled-linear
#: β 0.00085 → 0.012, 1000 steps, SNR shift s, zero terminal SNR, trailing timesteps, set_alpha_to_one):
#: lvdm's DDPM trains on it and samples it with diffusers' CogVideoXDDIMScheduler (ddim) or
#: CogVideoXDPMScheduler (dpm_solver).
def _cogvideox_ddpm(snr_shift_scale: float, sampler: str) -> tuple[str, dict]:
    return (_DDPM, dict(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085,
                        beta_end=0.012, sampler=sampler, num_sampling_steps=50, snr_shift_scale=snr_shift_scale,
                        zero_terminal_snr=True, timestep_spacing="trailing", set_alpha_to_one=True))


_COGVIDEOX_2B_SAMPLER = SamplerDefaults(
    _cogvideox_ddpm(3.0, "ddim"), 6.0, "empty_caption",
    source_sampler="diffusers' CogVideoXPipeline: CogVideoXDDIMScheduler (snr_shift_scale 3.0, zero terminal SNR, "
                   "trailing), 50 steps, guidance 6.0, T5 tokens padded to 226, 8 fps (lvdm: the same scheduler)")
_COGVIDEOX_5B_SAMPLER = SamplerDefaults(
    _cogvideox_ddpm(1.0, "dpm_solver"), 6.0, "empty_caption",
    source_sampler="diffusers' CogVideoXPipeline: CogVideoXDPMScheduler (snr_shift_scale 1.0, zero terminal SNR, "
                   "trailing), 50 steps, guidance 6.0 with use_dynamic_cfg (1 + 6 (1 - cos(pi ((50 - t) / 50)^5)) / 2), "
                   "T5 tokens padded to 226, 8 fps; lvdm: the same scheduler (its added noise from noise_seed) and "
                   "a constant guidance 6.0")

#: Mochi 1 preview (hf genmo/mochi-1-preview transformer/config.json = diffusers' MochiTransformer3DModel
#: defaults: 3072-wide video and 1536-wide text streams, 24 heads, 48 layers, T5-XXL tokens padded to 256).
_MOCHI_SAMPLER = SamplerDefaults(
    ("lvdm.diffusion.objectives.RectifiedFlow",
     dict(num_sampling_steps=64, target="x0_minus_eps", schedule="linear_quadratic", threshold_noise=0.025)),
    4.5, "empty_caption",
    source_sampler="diffusers' MochiPipeline: FlowMatchEulerDiscreteScheduler(invert_sigmas=True), 64 steps on "
                   "genmo's linear-quadratic sigma schedule (the noise level falls linearly by threshold_noise "
                   "0.025 over the first half of the steps, then quadratically to 0), guidance 4.5 (lvdm: Euler "
                   "on the same grid)")

#: name → :class:`Preset`, every published configuration lvdm reproduces.
TABLE: dict[str, Preset] = {name: Preset(name, *entry) for name, entry in {
    "dit-s2": _dit("S/2", "Table 1 (no published weights)", 32_865_056),
    "dit-b2": _dit("B/2", "Table 1 (no published weights)", 130_315_808),
    "dit-l2": _dit("L/2", "Table 1 (no published weights)", 457_840_672),
    "dit-xl2-256": _dit("XL/2", "DiT-XL-2-256x256.pt", 674_834_720),
    "dit-xl2-512": _dit("XL/2", "DiT-XL-2-512x512.pt", 674_834_720),
    "pixart-alpha-xl2-256": _stdit("pixart-alpha-xl2-256", _PIXART + "256x256", 610_856_096, _PIXART_SAMPLER),
    "pixart-alpha-xl2-512": _stdit("pixart-alpha-xl2-512", _PIXART + "512x512", 610_856_096, _PIXART_SAMPLER),
    "pixart-alpha-xl2-1024": _stdit("pixart-alpha-xl2-1024", _PIXART + "1024-MS", 611_349_152, _PIXART_1024),
    "latte-1": _stdit("latte-1", "github.com/Vchitect/Latte, hf maxin-cn/Latte-1", 1_057_246_880, SamplerDefaults(
        (_DDPM, dict(_LINEAR, sampler="ddim", num_sampling_steps=50)), 7.5, "empty_caption")),
    "opensora-v1.0-stdit-xl2": _stdit("opensora-v1.0-stdit-xl2", _OS + "v1.0, OpenSora-v1-16x256x256.pth",
                                      759_620_768, _OS10),
    "opensora-v1.0-stdit-xl2-512": _stdit("opensora-v1.0-stdit-xl2-512", _OS + "v1.0, OpenSora-v1-HQ-16x512x512.pth",
                                          759_620_768, _OS10),
    "opensora-v1.0-stdit-xl2-64x512": _stdit(
        "opensora-v1.0-stdit-xl2-64x512", _OS + "v1.0, configs/opensora/train/64x512x512.py (time_scale 2/3)",
        759_620_768, _OS10),
    "opensora-v1.2-stdit3-xl2": _stdit("opensora-v1.2-stdit3-xl2", _OS + "v1.2, hf hpcai-tech/OpenSora-STDiT-v3",
                                       1_207_643_936, _OS12),
    # 12,821,012,544: diffusers' HunyuanVideoTransformer3DModel() (hf hunyuanvideo-community/HunyuanVideo) on meta
    "hunyuanvideo": ("github.com/Tencent/HunyuanVideo (Kong et al. 2024), hf tencent/HunyuanVideo "
                     "hunyuan-video-t2v-720p", "MMDiT", _HUNYUAN, 12_821_012_544, _HUNYUAN_SAMPLER),
    # the same network as diffusers' own HunyuanVideoTransformer3DModel() behind lvdm's adapter
    "hunyuanvideo-diffusers": ("github.com/Tencent/HunyuanVideo (Kong et al. 2024), hf hunyuanvideo-community/"
                               "HunyuanVideo transformer/", "HunyuanVideoBackbone", {}, 12_821_012_544,
                               _HUNYUAN_SAMPLER),
    # 11,891,390,528: Open-Sora's own MMDiTModel with its 256px.py config on meta ("11B")
    "opensora-2.0": (_OS + "v2.0 (Peng et al. 2025), hf hpcai-tech/Open-Sora-v2 Open_Sora_v2.safetensors",
                     "MMDiT", _OPENSORA2, 11_891_390_528, _OPENSORA2_SAMPLER),
    # 1,418,996,800: diffusers' WanTransformer3DModel with the 1.3B config on meta ("1.3B")
    "wan2.1-t2v-1.3b": ("github.com/Wan-Video/Wan2.1 (Wan Team 2025), hf Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                        "WanBackbone", _WAN_1_3B, 1_418_996_800, _WAN_SAMPLER),
    # 14,288,491,584: diffusers' WanTransformer3DModel with the 14B config on meta ("14B")
    "wan2.1-t2v-14b": ("github.com/Wan-Video/Wan2.1 (Wan Team 2025), hf Wan-AI/Wan2.1-T2V-14B-Diffusers",
                       "WanBackbone", _WAN_14B, 14_288_491_584, _WAN_14B_SAMPLER),
    # 16,394,878,784: the I2V 14B config (in 36, image_dim 1280, added_kv_proj_dim 5120) on meta
    "wan2.1-i2v-14b-480p": ("github.com/Wan-Video/Wan2.1 (Wan Team 2025), hf Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
                            "WanBackbone", _WAN_I2V_14B, 16_394_878_784, _WAN_I2V_SAMPLER),
    # 28,576,983,168: two 14B experts ("A14B": 14B active per step, 27B in all)
    "wan2.2-t2v-a14b": ("github.com/Wan-Video/Wan2.2 (Wan Team 2025), hf Wan-AI/Wan2.2-T2V-A14B-Diffusers",
                        "WanExperts", _WAN22_T2V, 28_576_983_168, _WAN22_SAMPLER),
    # 1,693,783,872 / 5,570,283,072: diffusers' CogVideoXTransformer3DModel with the 2b / 5b configs on meta
    "cogvideox-2b": ("github.com/THUDM/CogVideo (Yang et al. 2024), hf THUDM/CogVideoX-2b", "CogVideoXBackbone",
                     _COGVIDEOX_2B, 1_693_783_872, _COGVIDEOX_2B_SAMPLER),
    "cogvideox-5b": ("github.com/THUDM/CogVideo (Yang et al. 2024), hf THUDM/CogVideoX-5b", "CogVideoXBackbone",
                     _COGVIDEOX_5B, 5_570_283_072, _COGVIDEOX_5B_SAMPLER),
    # 10,027,677,744: diffusers' MochiTransformer3DModel() (the preview's config) on meta ("10B")
    "mochi-1-preview": ("github.com/genmoai/mochi (Genmo 2024), hf genmo/mochi-1-preview", "MochiBackbone", {},
                        10_027_677_744, _MOCHI_SAMPLER),
    # 1,923,385,472: diffusers' LTXVideoTransformer3DModel() (the 0.9.x 2B config) on meta ("2B")
    "ltx-video-2b": ("github.com/Lightricks/LTX-Video (HaCohen et al. 2024), hf Lightricks/LTX-Video 0.9.x 2B",
                     "LTXBackbone", _LTX_2B, 1_923_385_472, _LTX_SAMPLER),
}.items()}


def from_name(name: str) -> Preset:
    """The :class:`Preset` called ``name`` (a clear error listing the names otherwise)."""
    if name not in TABLE:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(TABLE)}")
    return TABLE[name]
