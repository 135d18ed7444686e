"""One portable weights file from any training checkpoint.

``lvdm fit`` writes a ``.ckpt`` file under DDP / a single device, and a *directory* of shards
under DeepSpeed (``last.ckpt/checkpoint/*.pt``: bf16 module, float32 optimizer shards, the
Lightning state). :func:`export_checkpoint` (``lvdm checkpoint export``) turns either into one
``.safetensors`` file with the float32 weights (or the EMA weights) and the recipe of the model
as JSON metadata, from which :func:`lvdm.checkpoints.load.load_module` (and ``lvdm sample``) rebuild the
model with no other file and no DeepSpeed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lvdm.checkpoints.load import METADATA_KEY, ema_weights, read_checkpoint
from lvdm.checkpoints.stored_recipe import check_stored_recipe
from lvdm.utils import check_finite


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
    check_stored_recipe(hparams, source=f"checkpoint {checkpoint!r}")  # never copy a payload into a new file
    weights = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    if ema:
        shadow = ema_weights(ckpt)
        if not shadow:
            raise ValueError(f"--ema: checkpoint {checkpoint!r} has no EMA state (train with --config callbacks/ema.yaml)")
        unknown = set(shadow) - set(weights)
        if unknown:
            raise KeyError(f"EMA state of {checkpoint!r} names tensors the model does not have: {sorted(unknown)[:5]}")
        weights.update({k: v.float() for k, v in shadow.items()})
    check_finite(weights, f"checkpoint {checkpoint!r}" + (" (EMA weights)" if ema else ""))
    try:
        meta = json.dumps(hparams)
    except TypeError as err:
        raise ValueError(f"hyper-parameters of {checkpoint!r} are not JSON-serialisable: {err}") from err
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(
        _unshared(weights),
        out,
        metadata={METADATA_KEY: meta, "weights": "ema" if ema else "raw", "global_step": str(ckpt.get("global_step", ""))},
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
