"""Adapter-only LoRA checkpoints: load them as a merged model, merge them into one weights file,
export them for other tools.

A checkpoint written by ``lvdm fit`` with the :class:`~lvdm.training.callbacks.lora_training.LoRA`
callback holds the adapter tensors only (plus optimizer, step and callback states): its
``state_dict`` has no base weight, and ``callbacks["LoRA"]`` records the adapter's settings
(rank, alpha, adapted module names) and where the base came from (the run's ``InitFrom``
callbacks, with absolute paths). The recipe in ``hyper_parameters`` is the base model's.

:func:`load_adapter_module` (which :func:`lvdm.checkpoints.load.load_module` calls for such a
checkpoint, so ``lvdm sample`` reads it) rebuilds the base from that recipe, loads the base
weights (``base``, else the recorded ``InitFrom`` sources), adds the adapter, and merges it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from lvdm.checkpoints.export import _unshared
from lvdm.checkpoints.init_from import init_from
from lvdm.checkpoints.load import METADATA_KEY, LoadedModel, build_module, load_ema_weights, load_module, read_checkpoint
from lvdm.checkpoints.stored_recipe import check_stored_recipe
from lvdm.finetune.lora import ADAPTER_NAME, apply_lora, base_fingerprint, is_adapter_key, merge_lora
from lvdm.finetune.lora_files import (
    Layout,
    LoraPair,
    diffusers_metadata,
    diffusers_names,
    export_tensors,
    has_diffusers_names,
    original_kind,
)
from lvdm.utils import check_finite

STATE_KEY = "LoRA"
Weights = Literal["auto", "ema", "raw"]


def lora_settings(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The LoRA callback's recorded settings in a Lightning checkpoint dict, or None."""
    return (ckpt.get("callbacks") or {}).get(STATE_KEY)


def is_adapter_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether a Lightning checkpoint dict was written by a LoRA run (adapter-only ``state_dict``)."""
    return lora_settings(ckpt) is not None


def _load_base(module: torch.nn.Module, settings: dict[str, Any], base: str | None, source: str) -> str:
    """Fill the base weights of the rebuilt ``module``; return where they came from."""
    if base is not None:
        module.load_state_dict(load_module(base, weights="auto").module.state_dict(), strict=True)
        return base
    sources = settings.get("base") or []
    if not sources:
        raise ValueError(f"{source} holds a LoRA adapter whose base was the recipe's own initialisation (no InitFrom "
                         "in the run); give the base model: lvdm lora merge --base <checkpoint> --adapter <this file>")
    for spec in sources:
        if not Path(spec["source"]).exists():  # a checkpoint's record never makes lvdm download (a hub id) or guess
            raise FileNotFoundError(f"{source}: its base {spec['source']!r} (the run's InitFrom source) is not a local "
                                    "file or folder here; give the base model: lvdm lora merge --base <checkpoint>")
        target = module.get_submodule(spec["module"]) if spec["module"] else module
        init_from(target, spec["source"], spec["weights"], spec["strict"], spec["prefix"], verbose=False,
                  inflate_time=spec["inflate_time"], allow_position_change=spec["allow_position_change"])
    return ", ".join(spec["source"] for spec in sources)


def _check_fingerprint(module: torch.nn.Module, settings: dict[str, Any], base: str | None, source: str) -> None:
    """The loaded base must be the one the adapter was trained on: an error for the recorded
    sources (overwritten since?), a warning for a ``base`` given on purpose."""
    recorded, found = settings.get("base_fingerprint"), base_fingerprint(module)
    if not recorded or recorded == found:
        return
    message = (f"{source}: the base weights loaded (fingerprint {found}) differ from those its LoRA adapter was "
               f"trained on ({recorded})")
    if base is None:
        raise ValueError(f"{message}; was the InitFrom source overwritten since? give the right one with "
                         "lvdm lora merge --base")
    warnings.warn(f"{message}: merging into the given base {base!r} anyway", stacklevel=2)


def add_adapter(module: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
    """Wrap the part of ``module`` the settings name with the recorded (untrained) adapter, and
    the text encoder when the settings adapt it too; return that part."""
    part = module.get_submodule(settings["module"])
    apply_lora(part, settings["rank"], settings["alpha"], settings["dropout"], settings["targets"])
    text = settings.get("text_encoder")
    if text:
        apply_lora(module.get_submodule("text_encoder"), text["rank"], text["alpha"], 0.0, text["targets"])
    return part


def check_adapter_keys(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """The adapter keys of ``state_dict`` must be exactly those of ``module``."""
    want = {k for k in module.state_dict() if is_adapter_key(k)}
    have = {k for k in state_dict if is_adapter_key(k)}
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise KeyError(f"{source}: LoRA adapter keys do not match the model's (missing {missing[:3]}, unexpected {extra[:3]}); "
                       "was it trained with other LoRA targets or rank?")


def load_adapter_module(path: str | Path, weights: Weights = "auto", base: str | None = None,
                        ckpt: dict[str, Any] | None = None) -> LoadedModel:
    """The model of an adapter-only LoRA checkpoint with the adapter merged into the base.

    Args:
        path: the checkpoint ``lvdm fit`` wrote with the LoRA callback.
        weights: the adapter's ``ema`` / ``raw`` weights, or ``auto`` (EMA when there is one).
        base: the base model (an lvdm checkpoint or exported ``.safetensors`` of the recipe's
            model; its EMA weights when it has them); None: the ``InitFrom`` sources the run recorded.
        ckpt: the checkpoint dict when already read.
    """
    source = f"checkpoint {str(path)!r}"
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    settings = lora_settings(ckpt)
    if settings is None:
        raise ValueError(f"{source} holds no LoRA adapter (it was not trained with callbacks/lora.yaml)")
    module = build_module(ckpt.get("hyper_parameters") or {}, source=source)
    described = _load_base(module, settings, base, source)
    _check_fingerprint(module, settings, base, source)
    add_adapter(module, settings)
    adapter = {k: v for k, v in ckpt["state_dict"].items() if is_adapter_key(k)}
    check_adapter_keys(module, adapter, source)
    module.load_state_dict(adapter, strict=False)
    used: Literal["ema", "raw"] = "raw"
    if weights != "raw":
        if load_ema_weights(ckpt, module):
            used = "ema"
        elif weights == "ema":
            raise ValueError(f"{source} has no EMA weights (train with --config callbacks/ema.yaml)")
    merge_lora(module)
    check_finite(module.state_dict(), f"the merged {used} weights of {source}")
    return LoadedModel(module, used, ckpt.get("global_step"), f"{path} (LoRA merged into {described})")


def merge(adapter: str, out: str, base: str | None = None, weights: Weights = "auto") -> str:
    """Fold a LoRA adapter into its base model: one ``.safetensors`` that ``lvdm sample`` loads.

    Args:
        adapter: a checkpoint ``lvdm fit`` wrote with the LoRA callback (adapter only).
        out: the ``.safetensors`` file to write (full float32 weights and the recipe).
        base: the base model, an lvdm checkpoint or exported ``.safetensors`` of the recipe's
            model, its EMA weights when it has them (default: the ``InitFrom`` sources the LoRA
            run recorded, with their recorded weights choice).
        weights: the adapter's ``ema`` or ``raw`` weights, or ``auto`` (EMA when there is one).
    """
    from safetensors.torch import save_file

    if not out.endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, got {out!r}")
    ckpt = read_checkpoint(adapter)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    check_stored_recipe(hparams, source=f"checkpoint {adapter!r}")
    loaded = load_adapter_module(adapter, weights, base, ckpt=ckpt)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in loaded.module.state_dict().items()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(_unshared(tensors), out, metadata={METADATA_KEY: json.dumps(hparams), "weights": loaded.weights,
                                                 "global_step": str(ckpt.get("global_step", ""))})
    print(f"wrote {len(tensors)} tensors ({loaded.describe()}) to {out}")
    return out


def adapter_tensors(ckpt: dict[str, Any], weights: Weights, source: str) -> dict[str, torch.Tensor]:
    """The adapter tensors of a LoRA checkpoint: the EMA average (``ema``, or ``auto`` when
    there is one) or the trained values, keyed as in the LightningModule."""
    shadow = (ckpt.get("callbacks") or {}).get("EMA")
    if weights == "ema" and not shadow:
        raise ValueError(f"{source} has no EMA weights (train with --config callbacks/ema.yaml)")
    if weights != "raw" and shadow:
        return {k: v for k, v in shadow["shadow"].items() if is_adapter_key(k)}
    return {k: v for k, v in ckpt["state_dict"].items() if is_adapter_key(k)}


def _pairs(tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> dict[str, LoraPair]:
    """Adapter tensors (``denoiser.blocks.0.qkv.lora_A.default.weight``) as pairs by the part's module name."""
    part, scale = settings["module"], settings["alpha"] / settings["rank"]
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, role = key.removeprefix(f"{part}.").removesuffix(f".{ADAPTER_NAME}.weight").rpartition(".")
        grouped.setdefault(name, {})[role] = value
    return {name: LoraPair(ab["lora_A"], ab["lora_B"], scale) for name, ab in grouped.items()}


def _backbone(hparams: dict[str, Any], part: str, source: str) -> torch.nn.Module | None:
    """The adapted part of the recipe's model, built on the meta device (its module names only);
    None for a checkpoint without a recipe (a module built in Python)."""
    if not hparams.get("_instantiator"):
        return None
    with torch.device("meta"):
        return build_module(hparams, source=source).get_submodule(part)


def lora_file_tensors(tensors: dict[str, torch.Tensor], settings: dict[str, Any], hparams: dict[str, Any],
                      format: Layout, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LoRA run's adapter tensors in ``format`` (:mod:`lvdm.finetune.lora_files`) and the
    safetensors metadata: rank and alpha (``lora_adapter_metadata`` in diffusers' form too) and
    whose module names the file uses (``lvdm`` when the checkpoint has no recipe to build from)."""
    part, rank, alpha = settings["module"], settings["rank"], settings["alpha"]
    if part != "denoiser":
        raise ValueError(f"{source}: LoRA files are written for adapters on the denoiser, not {part!r}")
    if settings.get("text_encoder"):
        raise ValueError(f"{source}: LoRA files are written for the denoiser's adapter; this checkpoint adapts the "
                         "text encoder too: fold both into the model with lvdm lora merge")
    backbone, pairs = _backbone(hparams, part, source), _pairs(tensors, settings)
    if backbone is None and format == "original":
        raise ValueError(f"{source} carries no recipe: the original layout needs the model's class; use --format diffusers")
    if format == "original":
        out = export_tensors(pairs, backbone, format)
        return out, {"format": "pt", "rank": str(rank), "alpha": str(alpha),
                     "module_names": f"original:{original_kind(backbone)}"}
    names = {n: n for n in pairs} if backbone is None else diffusers_names(backbone)
    out = export_tensors(pairs, names, format)
    owner = "diffusers" if backbone is not None and has_diffusers_names(backbone) else "lvdm"
    targets = sorted(t for n in pairs for t in ((names[n],) if isinstance(names[n], str) else names[n]))
    return out, {**diffusers_metadata(targets, rank, alpha), "format": "pt",
                 "rank": str(rank), "alpha": str(alpha), "module_names": owner}


def export(checkpoint: str, out: str, format: Layout = "diffusers", weights: Weights = "auto") -> str:
    """Write a LoRA run's adapter as a LoRA file other tools read (float32, rank and alpha in the metadata).

    ``diffusers``: keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``, the config in
    ``lora_adapter_metadata``; ``<module>`` is the diffusers model's name for a backbone that wraps
    one (Wan, LTX-Video: ``WanPipeline.load_lora_weights`` reads it) or HunyuanVideo's MMDiT (its
    fused ``qkv`` / ``linear1`` split into diffusers' ``to_q`` / ``to_k`` / ``to_v`` / ``proj_mlp``),
    lvdm's own module name for lvdm's other backbones (metadata ``module_names: lvdm``; lvdm reads
    it back, a diffusers model does not).
    ``original``: ``diffusion_model.<original module>.lora_A.weight`` / ``lora_B.weight`` / ``.alpha``
    with the original model's module names (ComfyUI, the original repositories): Wan 2.1,
    HunyuanVideo (lvdm's MMDiT with a token refiner), Open-Sora STDiT / STDiT3.

    Args:
        checkpoint: a checkpoint ``lvdm fit`` wrote with the LoRA callback.
        out: the ``.safetensors`` file to write.
        format: ``diffusers`` or ``original``.
        weights: the adapter's ``ema`` or ``raw`` weights, or ``auto`` (EMA when there is one).
    """
    from safetensors.torch import save_file

    if format not in ("diffusers", "original"):
        raise ValueError(f"--format must be 'diffusers' or 'original', got {format!r}")
    if not out.endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, got {out!r}")
    source = f"checkpoint {checkpoint!r}"
    ckpt = read_checkpoint(checkpoint)
    settings = lora_settings(ckpt)
    if settings is None:
        raise ValueError(f"{source} holds no LoRA adapter (it was not trained with callbacks/lora.yaml)")
    tensors, metadata = lora_file_tensors(adapter_tensors(ckpt, weights, source), settings,
                                          ckpt.get("hyper_parameters") or {}, format, source)
    check_finite(tensors, f"the LoRA adapter of {source}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out, metadata=metadata)
    print(f"wrote {len(tensors)} LoRA tensors (rank {settings['rank']}, alpha {settings['alpha']}, {format} layout, "
          f"{metadata['module_names']} module names) to {out}")
    return out
