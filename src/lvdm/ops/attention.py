"""The one attention entry point of lvdm.

Every attention layer in ``lvdm.models`` calls :func:`attention`. Keeping a single function
means a backend (PyTorch SDPA, flash-attn, a plain ``math`` reference) is chosen in one place,
and sequence parallelism (``lvdm.distributed``) has exactly one place to hook in.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Literal

import torch
import torch.nn.functional as F

Backend = Literal["sdpa", "flash", "math"]

_BACKEND: Backend = "sdpa"

# flash-attn is optional: it cannot be built everywhere (e.g. CPU-only machines). FlashAttention-3
# (Hopper; its package installs the module ``flash_attn_interface``) is preferred over 2.
try:
    from flash_attn_interface import flash_attn_func as _flash_attn_func  # pragma: no cover

    FLASH_VERSION = 3  # pragma: no cover
except ImportError:
    try:
        from flash_attn import flash_attn_func as _flash_attn_func

        FLASH_VERSION = 2  # pragma: no cover
    except ImportError:  # pragma: no cover - depends on the environment
        _flash_attn_func = None
        FLASH_VERSION = 0


def flash_available() -> bool:
    """Whether flash-attn (FlashAttention-3 or -2, see ``FLASH_VERSION``) is importable."""
    return _flash_attn_func is not None


def set_backend(backend: Backend) -> None:
    """Select the global attention backend (``sdpa`` default, ``flash``, ``math``)."""
    global _BACKEND
    if backend not in ("sdpa", "flash", "math"):
        raise ValueError(f"unknown attention backend {backend!r}; choose sdpa, flash or math")
    if backend == "flash" and not flash_available():
        raise RuntimeError("attention backend 'flash' needs flash-attn: pip install 'lvdm[flash-attn]'")
    _BACKEND = backend


def get_backend() -> Backend:
    return _BACKEND


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Temporarily switch the attention backend."""
    previous = _BACKEND
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


def _math_attention(q, k, v, mask):
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention.

    Args:
        q: queries ``[B, heads, Lq, head_dim]``.
        k, v: keys and values ``[B, heads, Lk, head_dim]``.
        key_mask: optional boolean ``[B, Lk]``; ``True`` marks keys that may be attended to
            (e.g. the non-padding tokens of a caption). Every row must keep at least one key.

    Returns:
        ``[B, heads, Lq, head_dim]``.
    """
    mask = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)
    backend = _BACKEND
    if backend == "flash" and (mask is not None or q.dtype not in (torch.float16, torch.bfloat16)):
        backend = "sdpa"  # flash-attn has no key mask and needs half precision
    if backend == "flash":
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        if isinstance(out, tuple):  # some FlashAttention-3 releases also return the log-sum-exp
            out = out[0]
        return out.transpose(1, 2)
    if backend == "math":
        return _math_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
