"""Identity of a frozen text encoder whose caption embeddings ``lvdm data encode`` caches.

A text-embedding cache is only valid for the encoder that wrote it: another T5's embeddings
train a model on garbage without any error. :func:`identity` names a module by its class, its
configuration numbers and a digest of its weights; ``lvdm data encode`` writes it into every
sample's ``key.json`` and :class:`lvdm.training.module.LatentDiffusionModule` refuses a batch whose
identity differs from its own encoder's (:func:`check_identity`). (Compressors have their own,
:meth:`lvdm.compressors.base.Compressor.identity`, checked when latent shards are opened.)

The digest covers every tensor's name, shape and dtype and its first and last 4096 values
(not the whole tensor, so a multi-billion-parameter T5 is fingerprinted in milliseconds);
two checkpoints of one architecture differ there almost surely.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["identity", "check_identity"]

_EDGE = 4096
_CONFIG = ("dim", "max_length")


def identity(module: nn.Module) -> str:
    """``"<module.Class>@<16 hex digits>"``: the class and a digest of its configuration
    numbers and weights (see the module docstring)."""
    digest = hashlib.sha256()
    for name in _CONFIG:
        if hasattr(module, name):
            digest.update(f"{name}={getattr(module, name)!r};".encode())
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        edges = flat if flat.numel() <= 2 * _EDGE else torch.cat([flat[:_EDGE], flat[-_EDGE:]])
        digest.update(np.ascontiguousarray(edges.float().cpu().numpy()).tobytes())
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}@{digest.hexdigest()[:16]}"


def check_identity(found: Optional[Sequence[Optional[str]]], expected: str, part: str,
                   keys: Optional[Sequence[str]] = None) -> None:
    """Raise a ``ValueError`` when a batch's recorded identities (one per sample, ``None`` for
    samples that record none) are not ``expected``; ``part`` names the part in the message."""
    if not found:
        return
    bad = [(i, f) for i, f in enumerate(found) if f is not None and f != expected]
    if bad:
        index, other = bad[0]
        key = f" (sample {keys[index]!r})" if keys is not None else ""
        raise ValueError(f"this batch was cached by another {part}{key}: the cache records {other}, the model's "
                         f"{part} is {expected}. Re-encode the data with this {part} (lvdm data encode) or "
                         f"train with the {part} that made the cache")
