"""Open-Sora's own checkpoint layout → :class:`lvdm.models.stdit.STDiT`.

One key mapping covers the three files Open-Sora trains from and publishes: the original
PixArt-α ``.pth`` (``PixArt-XL-2-512x512.pth``, Open-Sora 1.0's initialisation), STDiT v1.0
(``OpenSora-v1-16x256x256.pth``) and STDiT3 v1.2 (``hpcai-tech/OpenSora-STDiT-v3``,
``model.safetensors``). Their module names are lvdm's except for:

* ``spatial_blocks.i`` (STDiT3) → ``blocks.i``; ``cross_attn.q_linear`` / ``kv_linear`` →
  ``cross_attn.q`` / ``kv``; ``y_embedder.y_proj`` → ``context_proj``;
  ``y_embedder.y_embedding`` (the learned null caption) → ``null_context``;
  ``csize_embedder`` / ``ar_embedder`` (PixArt-α 1024) → ``resolution_embedder`` /
  ``aspect_ratio_embedder``;
* PixArt-α's 2D patch convolution ``[D, C, p, p]`` → a 3D one ``[D, C, 1, p, p]``;
* fixed codes stored as tensors — ``pos_embed``, ``pos_embed_temporal`` (sin-cos) and
  ``rope.freqs`` (rotary frequencies) — are computed by lvdm; :func:`convert_state_dict`
  checks each against lvdm's code when the model is given (``pos_embed`` for the grid it was
  stored for, square or not: :func:`stored_grid`) and drops it.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from lvdm.models.rope import rope_frequencies
from lvdm.models.stdit import STDiT, sincos_2d, sincos_frames

_RENAMES = (
    ("spatial_blocks.", "blocks."),
    (".cross_attn.q_linear.", ".cross_attn.q."),
    (".cross_attn.kv_linear.", ".cross_attn.kv."),
    ("y_embedder.y_proj.", "context_proj."),
    ("y_embedder.y_embedding", "null_context"),
    ("csize_embedder.", "resolution_embedder."),
    ("ar_embedder.", "aspect_ratio_embedder."),
)
#: Fixed codes the checkpoints store and lvdm computes.
COMPUTED = ("pos_embed", "pos_embed_temporal", "rope.freqs")


def unwrap(checkpoint: Mapping, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights of an Open-Sora / PixArt file: a plain state dict, or one under ``ema``,
    ``state_dict``, ``model`` or ``module``; a ``module.`` prefix (DDP) is removed."""
    sd = checkpoint
    for key in ("ema", "state_dict", "model", "module"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{source}: not a state dict of tensors (top-level keys {sorted(checkpoint)[:8]})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def rename(key: str) -> str:
    for old, new in _RENAMES:
        if key.startswith(old) or (old.startswith(".") and old in key):
            key = key.replace(old, new, 1)
    return key


def convert_state_dict(sd: Mapping[str, torch.Tensor], model: Optional[STDiT] = None) -> dict[str, torch.Tensor]:
    """Open-Sora keys → STDiT keys. With ``model``, every stored fixed code is checked against
    the code ``model`` computes (a mismatch means a different position setting, e.g. a wrong
    ``interpolation_scale``, and raises naming it)."""
    out = {}
    for key, value in sd.items():
        if key in COMPUTED:
            if model is not None:
                _check_computed(key, value, model)
            continue
        if key == "x_embedder.proj.weight" and value.ndim == 4:  # PixArt-α's Conv2d
            value = value.unsqueeze(2)
        out[rename(key)] = value
    return out


def stored_grid(code: torch.Tensor) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of a stored 2D sin-cos code ``[h·w, D]`` (rows h-major, the
    second half of the channels encodes the row): ``w`` is the first row whose row code differs
    from row 0's. A checkpoint trained at a non-square size (Open-Sora 1.0's ``input_size``)
    stores a non-square grid."""
    rows = code[:, code.shape[1] // 2:]
    changed = (rows[1:] != rows[:1]).any(dim=1).nonzero()
    w = int(changed[0]) + 1 if len(changed) else code.shape[0]
    if code.shape[0] % w:
        raise ValueError(f"a stored 2D sin-cos code of {code.shape[0]} rows is not a grid of rows of {w}")
    return code.shape[0] // w, w


def _check_computed(key: str, stored: torch.Tensor, model: STDiT) -> None:
    if key == "rope.freqs":
        ours = rope_frequencies(model.hidden_size // model.num_heads)
        what = "rotary frequencies"
    elif key == "pos_embed_temporal":
        ours = sincos_frames(model.hidden_size, stored.shape[-2], model.time_scale)
        what = f"temporal sin-cos code (time_scale={model.time_scale:.4g})"
    else:
        h, w = stored_grid(stored.reshape(-1, stored.shape[-1]))
        ours = sincos_2d(model.hidden_size, h, w, model.base_size, model.interpolation_scale)
        what = f"2D sin-cos code (base_size={model.base_size}, interpolation_scale={model.interpolation_scale})"
    if stored.shape[-1] != ours.shape[-1]:
        raise ValueError(f"checkpoint key {key!r} has width {stored.shape[-1]}, the model's hidden_size is "
                         f"{model.hidden_size}")
    stored = stored.reshape(ours.shape).float()
    diff = (stored - ours).abs().max().item()
    if diff > 1e-4:
        raise ValueError(f"checkpoint key {key!r}: the stored {what} differs from the model's by {diff:.3g}; "
                         "the model was configured with other position settings than the checkpoint")
