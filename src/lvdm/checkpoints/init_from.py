"""Start a model from another model's weights: the phase hand-off of a training curriculum.

:func:`init_from` copies weights — nothing else: no optimizer, step or schedule — from

* a checkpoint ``lvdm fit`` wrote (``.ckpt`` or a DeepSpeed directory), raw or EMA weights,
* a ``.safetensors`` file from ``lvdm checkpoint export``,
* a diffusers PixArt-α or Latte folder (or hub id), or a local Wan 2.1 folder (a
  ``WanTransformer3DModel`` or a pipeline with ``transformer/``: the keys of
  :func:`lvdm.models.presets.from_diffusers_wan`'s backbone),
* an Open-Sora / PixArt-α ``.pth`` or ``.safetensors`` file, or Open-Sora 2.0's ``Open_Sora_v2.safetensors``,
* Tencent's original HunyuanVideo file (``mp_rank_00_model_states.pt``) or the Wan repository's
  ``diffusion_pytorch_model.safetensors`` (one file),

into a model whose keys may differ: keys present in both are copied, the model's other keys
keep their initialisation, and a :class:`KeyReport` says which were carried, which are new,
which the source had in excess and which had another shape. Loading an image model (phase 1,
or PixArt-α) into a spatial-temporal :class:`~lvdm.models.stdit.STDiT` carries every spatial
weight and leaves the temporal layers new; STDiT initialises those as the identity, so the
video model starts as the image model applied frame by frame.

A source trained under other *fixed position settings* than the model (the settings a backbone
declares in ``fixed_position_settings``: a position code's kind, grid or interpolation scale, the
timestep code's frequencies) is refused, naming the setting and both values: its weights would
load (even strictly) and silently give another model. The source's settings are known when it
carries its recipe (an ``lvdm fit`` checkpoint built by the CLI, an exported ``.safetensors``) or
its config (a diffusers folder); an Open-Sora ``.pth`` carries neither and is not checked.
``allow_position_change=True`` accepts a deliberate change (a new phase at another resolution).

Lightning checkpoints are read with :func:`lvdm.checkpoints.load.read_checkpoint` (weights-only
``torch.load``, DeepSpeed shards scanned then merged) — the weights alone, without rebuilding
the source's whole module (its text encoder, …) as :func:`lvdm.checkpoints.load.load_module` would.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import torch
from torch import nn

from lvdm.models.contract import fixed_position_settings
from lvdm.utils import check_finite

Weights = Literal["auto", "ema", "raw"]


@dataclass
class KeyReport:
    """What :func:`init_from` did with each tensor."""

    source: str
    carried: list[str] = field(default_factory=list)  #: copied from the source
    new: list[str] = field(default_factory=list)  #: the model's, absent from the source: kept as initialised
    unexpected: list[str] = field(default_factory=list)  #: the source's, absent from the model: ignored
    mismatched: list[str] = field(default_factory=list)  #: in both with different shapes: kept as initialised
    inflated: list[str] = field(default_factory=list)  #: carried, inflated from 1 frame in time (``inflate_time``)

    @staticmethod
    def _groups(keys: list[str]) -> str:
        """``blocks.0.attn.qkv.weight, blocks.1.attn.qkv.weight`` → ``blocks.*.attn.qkv.weight (2)``."""
        counts: dict[str, int] = {}
        for key in keys:
            pattern = re.sub(r"\.\d+\.", ".*.", key)
            counts[pattern] = counts.get(pattern, 0) + 1
        return ", ".join(f"{p} ({n})" if n > 1 else p for p, n in counts.items())

    def format(self) -> str:
        lines = [f"init_from {self.source}: carried {len(self.carried)} tensors"]
        for label, keys in (("inflated in time (image patch → video tubelet)", self.inflated),
                            ("new (kept their initialisation)", self.new),
                            ("unexpected (in the source, not in the model; ignored)", self.unexpected),
                            ("shape mismatch (kept their initialisation)", self.mismatched)):
            lines.append(f"  {label}: {len(keys)}" + (f": {self._groups(keys)}" if keys else ""))
        return "\n".join(lines)


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = False,
                 source: str = "state dict", inflate_time: bool = False) -> KeyReport:
    """Copy the tensors of ``state_dict`` whose key and shape the model shares; ``strict``:
    raise instead unless keys and shapes match exactly. ``inflate_time``: a DiT's patch
    embedding and output layer of temporal patch 1 (an image model) are inflated to the model's
    tubelets (:mod:`lvdm.models.inflate`) instead of counting as mismatched."""
    from lvdm.models.inflate import inflate_in_time

    ours = model.state_dict()
    report = KeyReport(source)
    loadable = {}
    for key, value in state_dict.items():
        if key not in ours:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(ours[key].shape):
            inflated = inflate_in_time(key, value, ours[key].shape) if inflate_time else None
            if inflated is None:
                report.mismatched.append(f"{key} {list(value.shape)} → {list(ours[key].shape)}")
            else:
                loadable[key] = inflated
                report.carried.append(key)
                report.inflated.append(key)
        else:
            loadable[key] = value
            report.carried.append(key)
    report.new = [k for k in ours if k not in state_dict]
    if strict and (report.new or report.unexpected or report.mismatched):
        raise KeyError(f"strict init_from does not match the model:\n{report.format()}")
    model.load_state_dict(loadable, strict=False)
    return report


def _strip(sd: Mapping[str, torch.Tensor], prefix: str, source: str) -> dict[str, torch.Tensor]:
    if not prefix:
        return dict(sd)
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise KeyError(f"{source} has no weights under {prefix!r} (its keys start with "
                       f"{sorted({k.split('.')[0] for k in sd})[:6]})")
    return out


def _stored_backbone(hparams: object, prefix: str, source: str) -> nn.Module | None:
    """The source's backbone, built on the meta device from the recipe an lvdm checkpoint or
    exported file stores (``hparams[prefix without its dot]``, the ``denoiser`` for a whole
    module: ``class_path`` + plain ``init_args``); None when the recipe does not give it (a
    module built in Python)."""
    from lvdm.checkpoints.stored_recipe import UnsafeCheckpointError, resolve_allowed

    spec = hparams.get(prefix.rstrip(".") or "denoiser") if isinstance(hparams, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str):
        return None
    args = spec.get("init_args") or {}
    if not isinstance(args, Mapping) or any(isinstance(v, Mapping) for v in args.values()):
        return None  # nested objects: not a plain backbone recipe
    try:
        build = resolve_allowed(spec["class_path"], f"{source}: {prefix.rstrip('.') or 'denoiser'}.class_path")
        with torch.device("meta"):
            return build(**args)
    except UnsafeCheckpointError:
        raise
    except (ValueError, TypeError):  # a class or argument this lvdm no longer has: settings unknown
        return None


def _source_settings(backbone: nn.Module | None) -> tuple[type, dict] | None:
    return None if backbone is None else (type(backbone), fixed_position_settings(backbone))


def _diffusers_class(folder: Path) -> str | None:
    """The ``_class_name`` of a diffusers model folder, or of a pipeline folder's ``transformer/``."""
    config = folder / "config.json" if (folder / "config.json").is_file() else folder / "transformer" / "config.json"
    return json.loads(config.read_text()).get("_class_name")


def read_source(source: str, weights: Weights = "auto",
                prefix: str = "denoiser.") -> tuple[dict[str, torch.Tensor], str, tuple[type, dict] | None]:
    """The weights of ``source`` in lvdm's key layout, a description of what they are, and the
    source backbone's ``(class, fixed position settings)`` where its recipe or config tells
    (else None).

    ``prefix``: where the model sits in an lvdm checkpoint (``denoiser.`` of the
    LatentDiffusionModule); published checkpoints have none."""
    from lvdm.checkpoints import load as checkpoint
    from lvdm.models import presets
    from lvdm.models.stdit import STDiT

    path = Path(source)
    diffusers_folder = path.is_dir() and ((path / "config.json").is_file() or (path / "transformer" / "config.json").is_file())
    hub_id = not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
    if diffusers_folder and _diffusers_class(path) == "WanTransformer3DModel":
        return presets.from_diffusers_wan(source).state_dict(), f"{source} (diffusers WanTransformer3DModel)", None
    if diffusers_folder or hub_id:  # a hub id is only downloaded because the user named one
        config, sd, name = presets.read_diffusers(source)
        kwargs, converted = presets.convert_diffusers(config, sd, name)
        with torch.device("meta"):
            settings = _source_settings(STDiT(**kwargs))
        return converted, f"{source} (diffusers {name})", settings
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(source, framework="pt") as f:
            meta = f.metadata() or {}
        if checkpoint.METADATA_KEY in meta:  # exported by `lvdm checkpoint export`
            stored = "ema" if meta.get("weights") == "ema" else "raw"
            if weights not in ("auto", stored):
                raise ValueError(f"{source!r} holds {stored} weights (exported so); asked for {weights!r}")
            settings = _source_settings(_stored_backbone(_json(meta[checkpoint.METADATA_KEY]), prefix, source))
            return _strip(load_file(source), prefix, source), f"{source} ({stored.upper()} weights, exported)", settings
        return (*_original_layout(load_file(source), source), None)
    if path.is_dir() or path.suffix == ".ckpt":  # Lightning / DeepSpeed checkpoint of lvdm fit
        ckpt = checkpoint.read_checkpoint(path)
        sd, used = dict(ckpt["state_dict"]), "raw"
        if weights != "raw":
            shadow = checkpoint.ema_weights(ckpt)
            if shadow is not None:
                sd.update(shadow)
                used = "ema"
            elif weights == "ema":
                raise ValueError(f"checkpoint {source!r} has no EMA weights (train with --config callbacks/ema.yaml)")
        step = ckpt.get("global_step")
        settings = _source_settings(_stored_backbone(ckpt.get("hyper_parameters"), prefix, source))
        return _strip(sd, prefix, source), f"{source} ({used.upper()} weights, step {step})", settings
    if not path.exists():
        raise FileNotFoundError(f"init_from: {source!r} does not exist")
    raw = checkpoint.torch_load(path)  # .pth / .pt / .bin of Open-Sora or PixArt-α
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source!r} holds a {type(raw).__name__}, not a state dict")
    return (*_original_layout(raw, source), None)


def _original_layout(raw: Mapping, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """A published model's own weights file in lvdm's keys, by the layout its keys show: Tencent's
    HunyuanVideo (MMDiT), Open-Sora 2.0's (MMDiT; Flux's names, ``Open_Sora_v2.safetensors``), the
    Wan repository's (WanBackbone, under ``transformer.``), else Open-Sora 1.x's / PixArt-α's. A
    weight of the first three without a place in lvdm is an error."""
    from lvdm.models.convert import hunyuan_original, opensora, opensora2, wan_original

    sd = opensora.unwrap(raw, source)
    try:
        if "txt_in.input_embedder.weight" in sd:
            return hunyuan_original.convert_state_dict(sd), f"{source} (HunyuanVideo, Tencent's layout)"
        if "img_in.weight" in sd:
            return opensora2.convert_state_dict(sd), f"{source} (Open-Sora 2.0 layout)"
        if any(k.endswith("head.head.weight") for k in sd):
            converted = wan_original.convert_state_dict(sd)
            return {f"transformer.{k}": v for k, v in converted.items()}, f"{source} (Wan's layout)"
    except KeyError as err:
        raise ValueError(f"{source}: {err.args[0]}") from None
    return opensora.convert_state_dict(sd), f"{source} (Open-Sora layout)"


def _json(text: str) -> object:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None  # unreadable metadata: the settings are unknown (loading the weights reports the rest)


def check_position_settings(model: nn.Module, source_settings: tuple[type, dict] | None, source: str) -> None:
    """Refuse a source whose backbone (of the model's class) has other fixed position settings
    than ``model``: one line naming the setting, the source's value and the model's."""
    if not hasattr(model, "fixed_position_settings"):  # a whole LightningModule: its denoiser
        model = getattr(model, "denoiser", model)
    if source_settings is None or source_settings[0] is not type(model):
        return
    ours = fixed_position_settings(model)
    for name, theirs in source_settings[1].items():
        mine = ours.get(name, theirs)
        if _plain(theirs) != _plain(mine):
            raise ValueError(
                f"init_from {source}: its {name} is {_plain(theirs)!r}, the model's is {_plain(mine)!r}: the weights "
                f"would meet other fixed position codes and silently give another model; build the model with "
                f"{name}={_plain(theirs)!r}, or pass allow_position_change=True if the change is meant")


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def init_from(model: nn.Module, source: str, weights: Weights = "auto", strict: bool = False,
              prefix: str = "denoiser.", verbose: bool = True, inflate_time: bool = False,
              allow_position_change: bool = False) -> KeyReport:
    """Load the weights of ``source`` (see the module docstring for the formats) into ``model``.

    Args:
        model: the model to start (e.g. a new phase's denoiser).
        source: checkpoint file or directory, exported ``.safetensors``, diffusers folder or
            hub id, or Open-Sora / PixArt-α, original HunyuanVideo or Wan weights file.
        weights: ``"ema"``, ``"raw"`` or ``"auto"`` (EMA when an lvdm checkpoint has it).
        strict: every key and shape must match; otherwise shared keys are copied and the
            rest reported.
        prefix: the model's prefix inside an lvdm checkpoint.
        verbose: print the key report.
        inflate_time: inflate an image DiT's patch embedding and output layer to the model's
            temporal patch (image → tubelet video DiT: the video model starts as the image
            model on still clips).
        allow_position_change: accept a source whose fixed position settings (see the module
            docstring) differ from the model's: a deliberate change, e.g. a phase at another
            resolution with another interpolation scale.

    Raises:
        ValueError: the source's weights hold NaN or inf (naming the source and the tensors),
            or its fixed position settings differ from the model's (naming the setting).
    """
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    sd, described, settings = read_source(source, weights, prefix)
    if not allow_position_change:
        check_position_settings(model, settings, described)
    check_finite(sd, f"init_from source {source!r}")  # a diverged phase must not start the next one
    report = load_weights(model, sd, strict=strict, source=described, inflate_time=inflate_time)
    if verbose:
        print(report.format(), flush=True)
    return report
