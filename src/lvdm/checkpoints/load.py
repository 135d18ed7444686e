"""Load a trained lvdm model from any checkpoint — safely.

One function, :func:`load_module`, is what sampling, evaluation, the app and ``init_from`` call.
It reads

* a ``.ckpt`` file written by ``lvdm fit`` (Lightning, single device or DDP),
* the directory DeepSpeed writes in its place (ZeRO-1/2/3 shards merged to float32),
* a ``.safetensors`` file from ``lvdm checkpoint export``,

rebuilds the model from the recipe stored with it and loads the raw or the EMA weights.

A checkpoint is a stranger's file. Pickles are read with ``torch.load(weights_only=True)``,
which only rebuilds tensors and plain containers and never runs code; DeepSpeed files (which
DeepSpeed itself unpickles freely) are scanned first and refused if they name a type outside
:data:`DEEPSPEED_ALLOWED_GLOBALS`. The recipe stored with the weights is built by the one safe
builder, :mod:`lvdm.checkpoints.stored_recipe`: every class it names, at any depth, must be lvdm's (or
torch.nn / torch.optim / Lightning's), no class spec may sit in an untyped parameter, no string
may be a pipe or URL, and jsonargparse's import policy is enforced while it builds.
"""

from __future__ import annotations

import importlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lvdm.checkpoints.stored_recipe import INSTANTIATOR, UnsafeCheckpointError, build_stored_module  # noqa: F401 (re-exported)
from lvdm.utils import check_finite

#: Types a DeepSpeed checkpoint file may name besides what ``weights_only`` allows.
DEEPSPEED_ALLOWED_GLOBALS = frozenset(
    {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address",
        "deepspeed.checkpoint.utils.clone_tensors_for_torch_save",
        "enum.Enum",
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
        "torch.BFloat16Storage",
        "torch.HalfStorage",
        "torch.LongStorage",
        "torch.IntStorage",
    }
)
METADATA_KEY = "lvdm_hyper_parameters"
# DeepSpeed's own entries in a model-states file; everything else is Lightning's client state.
_DEEPSPEED_KEYS = (
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "skipped_steps",
    "global_steps", "global_samples", "dp_world_size", "mp_world_size", "checkpoint_parallel_dimensions",
    "ds_config", "ds_version", "csr_tensor_module_names",
)


def torch_load(path: str | Path) -> Any:
    """``torch.load`` that cannot run code: tensors and plain containers only.

    A file whose pickle names other types (the usual form of a malicious checkpoint) fails
    with :class:`UnsafeCheckpointError` naming the file and what it asked for."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it is not a plain weights file (loading it could run code). "
            f"torch said: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, KeyError, EOFError, ValueError, OSError) as err:  # truncated, text, not torch
        raise ValueError(f"{str(path)!r} is not a readable torch checkpoint ({type(err).__name__}: {err})") from None


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """True for a DeepSpeed checkpoint directory (it holds a ``latest`` tag file)."""
    return Path(path).is_dir() and (Path(path) / "latest").is_file()


def _check_deepspeed_files(tag_dir: Path) -> None:
    """DeepSpeed unpickles its files without the weights-only guard: scan each pickle for the types
    it names (without running it) and refuse anything off the allow-list."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    for file in sorted(tag_dir.glob("*.pt")):
        try:
            names = set(get_unsafe_globals_in_checkpoint(file))
        except Exception as err:  # not a torch zip file at all
            raise UnsafeCheckpointError(f"refusing DeepSpeed file {str(file)!r}: unreadable ({err})") from None
        unknown = sorted(names - DEEPSPEED_ALLOWED_GLOBALS)
        if unknown:
            raise UnsafeCheckpointError(
                f"refusing DeepSpeed file {str(file)!r}: it names types outside lvdm's allow-list {unknown[:5]} "
                "(loading it could run code)"
            )


def check_deepspeed_checkpoint(path: str | Path) -> None:
    """Scan the files of the DeepSpeed checkpoint directory ``path`` (the tag ``latest`` names)
    before DeepSpeed unpickles them, e.g. when Lightning resumes from it; raise
    :class:`UnsafeCheckpointError` for a type off the allow-list."""
    path = Path(path)
    tag_dir = path / (path / "latest").read_text().strip()
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"DeepSpeed checkpoint {str(path)!r}: its 'latest' names {tag_dir.name!r}, which does not exist")
    _check_deepspeed_files(tag_dir)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint as one dict with a whole float32 ``state_dict``.

    Args:
        path: a ``.ckpt`` file, or the directory DeepSpeed wrote in its place (ZeRO-1/2/3
            shards are merged with DeepSpeed's ``zero_to_fp32`` after a safety scan).

    Returns:
        Lightning's checkpoint dict: ``state_dict``, ``hyper_parameters``, ``callbacks``,
        ``global_step``…
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file():
        ckpt = torch_load(path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
        return ckpt
    if not is_deepspeed_checkpoint(path):
        raise ValueError(
            f"{str(path)!r} is a directory but not a DeepSpeed checkpoint (no 'latest' file in it); "
            "give the .ckpt directory that `lvdm fit` wrote under DeepSpeed"
        )
    # Lightning's convert_zero_checkpoint_to_fp32_state_dict does the same merge but writes a
    # file; here the merged dict is wanted in memory, so its two DeepSpeed calls are made directly.
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
    _check_deepspeed_files(tag_dir)
    with torch.serialization.safe_globals(_deepspeed_safe_types()):
        optim = torch.load(optim_files[0], map_location="cpu", weights_only=True)
        zero_stage = optim["optimizer_state_dict"]["zero_stage"]
        client = torch.load(get_model_state_file(str(tag_dir), zero_stage), map_location="cpu", weights_only=True)
    ckpt = {k: v for k, v in client.items() if k not in _DEEPSPEED_KEYS}
    ckpt["state_dict"] = get_fp32_state_dict_from_zero_checkpoint(str(path))  # files scanned above
    return ckpt


def _deepspeed_safe_types() -> list:
    types = []
    for name in DEEPSPEED_ALLOWED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            types.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another DeepSpeed version: that type is simply absent
            pass
    return types


def ema_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The EMA callback's averaged weights stored in a checkpoint dict, or None."""
    state = (ckpt.get("callbacks") or {}).get("EMA")
    return dict(state["shadow"]) if state else None


def load_ema_weights(checkpoint: dict, module: torch.nn.Module) -> bool:
    """Copy the EMA weights stored in a Lightning ``checkpoint`` dict into ``module``.

    Returns False (and changes nothing) when the checkpoint carries no EMA state."""
    shadow = ema_weights(checkpoint)
    if shadow is None:
        return False
    params = dict(module.named_parameters())
    unknown = set(shadow) - set(params)
    if unknown:
        raise KeyError(f"EMA state names parameters the model does not have: {sorted(unknown)[:5]}")
    with torch.no_grad():
        for n, t in shadow.items():
            params[n].copy_(t)
    return True


def build_module(hparams: dict[str, Any], source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the LightningModule a stored recipe describes (``hyper_parameters`` of a
    checkpoint written by ``lvdm fit``) through the one safe builder,
    :func:`lvdm.checkpoints.stored_recipe.build_stored_module`."""
    return build_stored_module(hparams, source)


@dataclass
class LoadedModel:
    """What :func:`load_module` loaded: the module and which weights it holds."""

    module: torch.nn.Module
    weights: Literal["ema", "raw"]
    global_step: int | None
    source: str

    def describe(self) -> str:
        step = "" if self.global_step is None else f" at step {self.global_step}"
        return f"{'EMA' if self.weights == 'ema' else 'raw (non-EMA)'} weights{step} from {self.source}"


def load_module(
    path: str | Path, weights: Literal["auto", "ema", "raw"] = "auto", map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """Rebuild a trained model from any checkpoint lvdm writes, with its weights, safely; a
    step-cache calibration next to it (``<path>.step_cache.json``, :mod:`lvdm.diffusion.cache_calibration`)
    is read into the module's ``step_cache_calibration`` (a malformed one fails naming the file).

    Args:
        path: a ``.ckpt`` file, a DeepSpeed checkpoint directory, or an exported ``.safetensors``;
            a LoRA run's adapter-only checkpoint gives its base with the adapter merged
            (:func:`lvdm.finetune.adapter_files.load_adapter_module`).
        weights: ``"ema"`` (the EMA callback's average; an error if there is none), ``"raw"``
            (the trained weights), or ``"auto"`` (EMA when the checkpoint has it). An exported
            ``.safetensors`` holds the one set of weights it was exported with.
        map_location: device to put the module on.
    """
    loaded = _load_module(Path(path), weights, map_location)
    from lvdm.diffusion.cache_calibration import calibration_path, read_calibration

    sidecar = calibration_path(path)
    if sidecar.exists():
        loaded.module.step_cache_calibration = read_calibration(sidecar)
    return loaded


def _load_module(path: Path, weights: str, map_location: str | torch.device) -> LoadedModel:
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        module, stored, step = _load_safetensors(path)
        if weights != "auto" and weights != stored:
            raise ValueError(f"{str(path)!r} holds {stored} weights (exported so); asked for {weights!r}")
        check_finite(module.state_dict(), f"weights file {str(path)!r}")
        return LoadedModel(module.to(map_location), stored, step, str(path))
    ckpt = read_checkpoint(path)
    if (ckpt.get("callbacks") or {}).get("LoRA") is not None:  # adapter only: its base is loaded, the adapter merged
        from lvdm.finetune.adapter_files import load_adapter_module

        loaded = load_adapter_module(path, weights, ckpt=ckpt)
        loaded.module.to(map_location)
        return loaded
    module = build_module(ckpt.get("hyper_parameters") or {}, source=f"checkpoint {str(path)!r}")
    module.load_state_dict(ckpt["state_dict"], strict=True)
    used: Literal["ema", "raw"] = "raw"
    if weights != "raw":
        if load_ema_weights(ckpt, module):
            used = "ema"
        elif weights == "ema":
            raise ValueError(f"checkpoint {str(path)!r} has no EMA weights (train with --config callbacks/ema.yaml)")
    check_finite(module.state_dict(), f"the {used} weights of checkpoint {str(path)!r}")
    return LoadedModel(module.to(map_location), used, ckpt.get("global_step"), str(path))


def _load_safetensors(path: Path) -> tuple[torch.nn.Module, Literal["ema", "raw"], int | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{str(path)!r} has no {METADATA_KEY!r} metadata; write it with `lvdm checkpoint export`")
    try:
        hparams = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r}: its {METADATA_KEY!r} metadata is not JSON: {err}") from None
    if not isinstance(hparams, dict):
        raise ValueError(f"{str(path)!r}: its {METADATA_KEY!r} metadata is not a JSON object")
    module = build_module(hparams, source=f"weights file {str(path)!r}")
    module.load_state_dict(load_file(str(path)), strict=True)
    step = meta.get("global_step", "")
    return module, ("ema" if meta.get("weights") == "ema" else "raw"), int(step) if step.isdigit() else None
