"""The one attention entry point of lvdm.

Every attention layer in ``lvdm.models`` calls :func:`attention`. Keeping a single function
means a backend (PyTorch SDPA, flash-attn, a plain ``math`` reference) is chosen in one place,
and sequence parallelism (``lvdm.distributed``) has exactly one place to hook in.

Sequence parallelism hooks in here without this module (or any model) importing
``torch.distributed``: a model marks the attention calls whose keys live on other ranks with
``sharded=True`` and cuts / rejoins its token sequence with :func:`shard_sequence` /
:func:`gather_sequence`. All three are plain local operations until
``lvdm.distributed`` registers an implementation with :func:`set_sequence_parallel`
(it does so only while the trainer runs a step on all ranks of a sequence-parallel group).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Literal, Optional, Protocol

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


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Temporarily switch the attention backend."""
    previous = _BACKEND
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


class SequenceParallelImpl(Protocol):
    """What ``lvdm.distributed`` registers to make the hooks below distributed."""

    #: Number of ranks that share one sequence.
    size: int

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's contiguous chunk of ``x`` along ``dim``."""

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The chunks of all ranks joined along ``dim`` (every rank gets the whole)."""

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: Optional[torch.Tensor],
        local_attention: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """Attention of local queries over the keys of all ranks; ``local_attention`` is the
        single-device attention (the selected backend) to use where a method needs one."""


_SEQUENCE_PARALLEL: Optional[SequenceParallelImpl] = None


def set_sequence_parallel(impl: Optional[SequenceParallelImpl]) -> Optional[SequenceParallelImpl]:
    """Register the sequence-parallel implementation (``None`` turns it off); returns the
    previous one. Called by ``lvdm.distributed``, not by models."""
    global _SEQUENCE_PARALLEL
    previous = _SEQUENCE_PARALLEL
    _SEQUENCE_PARALLEL = impl
    return previous


@contextlib.contextmanager
def sequence_parallel(impl: Optional[SequenceParallelImpl]) -> Iterator[None]:
    """Temporarily register ``impl`` (or none) as the sequence-parallel implementation."""
    previous = set_sequence_parallel(impl)
    try:
        yield
    finally:
        set_sequence_parallel(previous)


def sequence_parallel_size() -> int:
    """Ranks sharing one sequence right now (1 when sequence parallelism is off)."""
    return 1 if _SEQUENCE_PARALLEL is None else _SEQUENCE_PARALLEL.size


def shard_sequence(x: torch.Tensor, dim: int) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` along ``dim`` (``x`` itself without sequence
    parallelism). The length along ``dim`` must divide by :func:`sequence_parallel_size`."""
    if _SEQUENCE_PARALLEL is None or _SEQUENCE_PARALLEL.size == 1:
        return x
    return _SEQUENCE_PARALLEL.shard(x, dim)


def gather_sequence(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Undo :func:`shard_sequence`: the chunks of all ranks joined along ``dim`` (``x``
    itself without sequence parallelism)."""
    if _SEQUENCE_PARALLEL is None or _SEQUENCE_PARALLEL.size == 1:
        return x
    return _SEQUENCE_PARALLEL.gather(x, dim)


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
    *,
    sharded: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention.

    Args:
        q: queries ``[B, heads, Lq, head_dim]``.
        k, v: keys and values ``[B, heads, Lk, head_dim]``.
        key_mask: optional boolean ``[B, Lk]``; ``True`` marks keys that may be attended to
            (e.g. the non-padding tokens of a caption). Every row must keep at least one key.
        sharded: ``q``, ``k``, ``v`` (and ``key_mask``) are this rank's contiguous chunk of a
            sequence split across the sequence-parallel group, so the queries must attend to
            the keys of every rank. Without sequence parallelism this changes nothing.

    Returns:
        ``[B, heads, Lq, head_dim]`` (this rank's chunk of queries when ``sharded``).
    """
    if sharded and _SEQUENCE_PARALLEL is not None and _SEQUENCE_PARALLEL.size > 1:
        return _SEQUENCE_PARALLEL.attention(q, k, v, key_mask, _local_attention)
    return _local_attention(q, k, v, key_mask)


def _local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention on this device with the selected backend."""
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
