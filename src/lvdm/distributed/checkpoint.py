"""One portable weights file from any training checkpoint.

``lvdm fit`` writes a ``.ckpt`` file under DDP / a single device, and a *directory* of shards
under DeepSpeed (``last.ckpt/checkpoint/*.pt``: bf16 module, float32 optimizer shards, the
Lightning state). :func:`export_checkpoint` (``lvdm checkpoint export``) turns either into one
``.safetensors`` file with the float32 weights (or the EMA weights) and the recipe of the model
as JSON metadata, which :func:`load_safetensors_module` (and ``lvdm sample``) rebuild the model
from, with no other file and no DeepSpeed.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

# DeepSpeed's own entries in a model-states file; everything else is Lightning's client state.
_DEEPSPEED_KEYS = (
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "skipped_steps",
    "global_steps", "global_samples", "dp_world_size", "mp_world_size", "checkpoint_parallel_dimensions",
    "ds_config", "ds_version", "csr_tensor_module_names",
)
METADATA_KEY = "lvdm_hyper_parameters"


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """True for a DeepSpeed checkpoint directory (it holds a ``latest`` tag file)."""
    return Path(path).is_dir() and (Path(path) / "latest").is_file()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint as one dict with a whole float32 ``state_dict``.

    Args:
        path: a ``.ckpt`` file, or the directory DeepSpeed wrote in its place (ZeRO-1/2/3
            shards are merged with DeepSpeed's ``zero_to_fp32``).

    Returns:
        Lightning's checkpoint dict: ``state_dict``, ``hyper_parameters``, ``callbacks``,
        ``global_step``…
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
        return ckpt
    if not is_deepspeed_checkpoint(path):
        raise ValueError(
            f"{str(path)!r} is a directory but not a DeepSpeed checkpoint (no 'latest' file in it); "
            "give the .ckpt directory that `lvdm fit` wrote under DeepSpeed"
        )
    # Lightning's convert_zero_checkpoint_to_fp32_state_dict does the same merge but writes a
    # file; here the merged dict is wanted in memory (export, tests), so its two DeepSpeed calls
    # are made directly.
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, get_model_state_file
    except ImportError as err:
        raise ImportError(f"reading the DeepSpeed checkpoint {str(path)!r} needs `pip install 'lvdm[deepspeed]'`") from err

    tag_dir = path / (path / "latest").read_text().strip()
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"DeepSpeed checkpoint {str(path)!r}: its 'latest' names {tag_dir.name!r}, which does not exist")
    optim_files = sorted(tag_dir.glob("*_optim_states.pt"))
    if not optim_files:
        raise FileNotFoundError(f"DeepSpeed checkpoint {str(tag_dir)!r} has no *_optim_states.pt files")
    optim = torch.load(optim_files[0], map_location="cpu", weights_only=False)
    zero_stage = optim["optimizer_state_dict"]["zero_stage"]
    client = torch.load(get_model_state_file(str(tag_dir), zero_stage), map_location="cpu", weights_only=False)
    ckpt = {k: v for k, v in client.items() if k not in _DEEPSPEED_KEYS}
    ckpt["state_dict"] = get_fp32_state_dict_from_zero_checkpoint(str(path))
    return ckpt


def export_checkpoint(checkpoint: str, out: str, ema: bool = False) -> str:
    """Write a training checkpoint's weights as one ``.safetensors`` file that ``lvdm sample`` loads.

    The file holds every tensor of the model in float32 and, as JSON metadata, the model's
    recipe (the hyper-parameters ``lvdm fit`` stored), so it rebuilds the model alone.

    Args:
        checkpoint: a ``.ckpt`` file or a DeepSpeed checkpoint directory written by ``lvdm fit``.
        out: the ``.safetensors`` file to write.
        ema: store the EMA weights (from the ``EMA`` callback's state) instead of the raw ones.
    """
    from safetensors.torch import save_file

    if not out.endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, got {out!r}")
    ckpt = read_checkpoint(checkpoint)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if "_instantiator" not in hparams:
        raise ValueError(
            f"checkpoint {checkpoint!r} carries no recipe (it was not trained with `lvdm fit`), so the exported "
            "file could not rebuild the model"
        )
    weights = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    if ema:
        state = (ckpt.get("callbacks") or {}).get("EMA")
        if not state:
            raise ValueError(f"--ema: checkpoint {checkpoint!r} has no EMA state (train with --config callbacks/ema.yaml)")
        unknown = set(state["shadow"]) - set(weights)
        if unknown:
            raise KeyError(f"EMA state of {checkpoint!r} names tensors the model does not have: {sorted(unknown)[:5]}")
        weights.update({k: v.float() for k, v in state["shadow"].items()})
    try:
        meta = json.dumps(hparams)
    except TypeError as err:
        raise ValueError(f"hyper-parameters of {checkpoint!r} are not JSON-serialisable: {err}") from err
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(
        _unshared(weights),
        out,
        metadata={METADATA_KEY: meta, "weights": "ema" if ema else "model", "global_step": str(ckpt.get("global_step", ""))},
    )
    print(f"wrote {len(weights)} tensors ({'EMA' if ema else 'model'} weights, step {ckpt.get('global_step')}) to {out}")
    return out


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no storage shared between keys: safetensors refuses tied
    weights (e.g. T5's ``shared`` / ``embed_tokens``), so a repeat is saved as its own copy
    (loading writes the same values into the tied parameter twice)."""
    seen: set[int] = set()
    out = {}
    for key, value in weights.items():
        value = value.contiguous()
        storage = value.untyped_storage().data_ptr()
        out[key] = value.clone() if storage in seen else value
        seen.add(storage)
    return out


def load_safetensors_module(path: str) -> torch.nn.Module:
    """Rebuild the module a ``.safetensors`` file from :func:`export_checkpoint` describes, with its weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path!r} has no {METADATA_KEY!r} metadata; write it with `lvdm checkpoint export`")
    hparams = json.loads(meta[METADATA_KEY])
    module_path, _, name = hparams.pop("_instantiator").rpartition(".")
    instantiate = getattr(importlib.import_module(module_path), name)
    class_module, _, class_name = hparams["_class_path"].rpartition(".")
    cls = getattr(importlib.import_module(class_module), class_name)
    module = instantiate(cls, hparams)
    module.load_state_dict(load_file(path), strict=True)
    return module
