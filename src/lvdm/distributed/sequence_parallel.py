"""Sequence parallelism: one video's token sequence split across the ranks of a group.

A video DiT is a small model over an enormous sequence (Open-Sora trains on up to 819K patch
tokens), so the activations, not the weights, fill the memory. Sequence parallelism gives each
of ``P`` ranks a contiguous chunk of every sequence; the model itself stays single-device code
(``lvdm.models`` declares where its sequence may be split, ``DiT.sequence_parallel_plan``, and
:mod:`lvdm.distributed.plan` hooks the cut and the gather in); three entry points in
:mod:`lvdm.ops.attention` are what this module makes distributed:

* ``shard_sequence`` — take this rank's chunk. Backward: the chunk's gradient, zero elsewhere
  (no communication; it is the adjoint of slicing).
* ``gather_sequence`` — all-gather the chunks. Backward: reduce-scatter (sum) of the gradient,
  the adjoint of all-gather.
* ``attention(..., sharded=True)`` — the queries of the local chunk attend to the keys of all
  chunks, by one of two methods:

  - **Ulysses** (DeepSpeed-Ulysses): an all-to-all turns "all heads of N/P tokens" into "H/P
    heads of all N tokens", each rank runs ordinary attention (the selected backend: SDPA or
    flash-attn) on its heads, and a second all-to-all turns it back. Per sharded attention
    each rank sends ``4·N·D·(P-1)/P²`` values (q, k, v and the output; ``N`` tokens, width
    ``D``) in forward and as much in backward. Needs ``heads % P == 0``.
  - **Ring**: K/V chunks travel round the ring of ranks (P-1 sends); each step attends the
    local queries to one chunk, and the partial results merge by their log-sum-exp (online
    softmax). Works for any head count; each rank sends ``2·N·D·(P-1)/P`` values (K and V,
    P-1 times; twice that in backward), and the blocks are computed in plain differentiable
    torch (no flash kernel; scores recomputed in backward), so it is slower than Ulysses.

Why the gradients come out right (proved by ``tests/distributed/test_sequence_parallel.py``):
after the final gather every rank of a group holds the whole output, so all ``P`` ranks compute
the same loss ``L``. Summed over the group, the objective is ``P·L``; the gather's backward
(reduce-scatter of ``P`` equal gradients) hands each rank ``P`` times its chunk's share, and
the shard's backward keeps only that share. Summing the parameter gradients of all ranks gives
``P·dL/dθ``; DDP and DeepSpeed *average* over all ``DP·P`` ranks, which gives exactly the
gradient of the mean loss over the ``DP`` distinct batches — the single-process gradient.

This requires that the ranks of one group see the same batch, noise and timesteps: the
:class:`lvdm.training.callbacks.parallel.SequenceParallel` callback (the way to turn this on from a recipe) makes the data modules split data by data-parallel rank
(``global_rank // P``) and seeds the random generators per data-parallel rank.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
import torch.distributed as dist

Mode = Literal["ulysses", "ring"]

__all__ = ["SequenceParallelGroup", "new_sequence_parallel_group"]


# ---------------------------------------------------------------------------------- collectives
# Written here rather than taken from torch.distributed.nn.functional: that module is
# deprecated in torch 2.13 and its all_gather backward fails on subgroups with gloo.
def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """``x[j]`` goes to rank ``j``; returns ``out`` with ``out[j]`` from rank ``j``."""
    x = x.contiguous()  # (empty_like would copy a non-contiguous layout the collective ignores)
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """All-to-all over dim 0; it exchanges chunk ``(i, j)`` with ``(j, i)``, so it is its own adjoint."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _all_to_all(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all(grad, ctx.group), None


class _AllGather(torch.autograd.Function):
    """All-gather along ``dim``. Adjoint: reduce-scatter (sum) — written as an all-to-all of the
    gradient's chunks and a local sum, the same traffic, and supported by every backend."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        size = dist.get_world_size(ctx.group)
        chunks = torch.stack(grad.chunk(size, dim=ctx.dim))  # chunks[j]: gradient of rank j's part
        return _all_to_all(chunks, ctx.group).sum(0), None, None


# ---------------------------------------------------------------------------------- ring shift
class _RingShift(torch.autograd.Function):
    """``y`` on group rank ``r`` is ``x`` of rank ``r - 1``. Its adjoint shifts the other way:
    the gradient of ``x`` on rank ``r`` is the gradient of ``y`` on rank ``r + 1``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: "SequenceParallelGroup") -> torch.Tensor:
        ctx.group = group
        return group.shift(x, +1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.group.shift(grad, -1), None


def _online_block(q, k, v, mask, m_safe):
    """One ring step: unnormalised attention of ``q`` to one K/V chunk against the running
    maximum ``m_safe`` → (numerator ``[.., Lq, d]``, denominator ``[.., Lq, 1]``)."""
    scores = torch.matmul(q, k.transpose(-2, -1))
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    p = torch.exp(scores - m_safe)
    return torch.matmul(p, v), p.sum(-1, keepdim=True)


class _RecomputedBlock(torch.autograd.Function):
    """:func:`_online_block` that keeps only its inputs and recomputes the ``Lq × Lk`` score
    block in backward (a hand-written checkpoint: ``torch.utils.checkpoint`` would do, but its
    first use imports torch._dynamo and sympy, seconds in every process). ``m_safe`` is a constant: the final
    ``num / den`` does not depend on it."""

    @staticmethod
    def forward(ctx, q, k, v, mask, m_safe):
        ctx.save_for_backward(q, k, v, m_safe)
        ctx.mask = mask
        return _online_block(q, k, v, mask, m_safe)

    @staticmethod
    def backward(ctx, grad_num, grad_den):
        q, k, v, m_safe = ctx.saved_tensors
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        with torch.enable_grad():
            num, den = _online_block(*inputs, ctx.mask, m_safe)
            # the vector-Jacobian product as the gradient of a scalar: the same numbers, and it
            # skips autograd.grad's grad_outputs check (whose first use imports sympy, seconds)
            vjp = (num * grad_num).sum() + (den * grad_den).sum()
        grads = torch.autograd.grad(vjp, inputs)
        return (*grads, None, None)


# ---------------------------------------------------------------------------------- the group
class SequenceParallelGroup:
    """The implementation of :mod:`lvdm.ops.attention`'s sequence-parallel hooks for one group.

    Build it with :func:`new_sequence_parallel_group` (all ranks at once), then register it
    with ``lvdm.ops.attention.set_sequence_parallel`` (or the ``sequence_parallel`` context
    manager) around the model calls that all ranks of the group make together.

    Args:
        group: the process group of the ranks that share one sequence, in sequence order.
        mode: ``ulysses`` (all-to-all over heads; ``heads % size == 0``) or ``ring`` (K/V passed
            round the ring; any head count).
    """

    def __init__(self, group: dist.ProcessGroup, mode: Mode = "ulysses"):
        if mode not in ("ulysses", "ring"):
            raise ValueError(f"sequence-parallel mode must be 'ulysses' or 'ring', got {mode!r}")
        self.group = group
        self.mode = mode
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def __repr__(self) -> str:
        return f"SequenceParallelGroup(size={self.size}, rank={self.rank}, mode={self.mode!r})"

    # ---------------------------------------------------------------- shard / gather
    def _check_divides(self, length: int, what: str) -> None:
        if length % self.size:
            raise ValueError(f"{what} of length {length} cannot be split evenly across the "
                             f"{self.size} ranks of the sequence-parallel group")

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's contiguous chunk of ``x`` along ``dim``; its backward is the zero-padded
        gradient of the chunk (the adjoint of slicing, no communication)."""
        self._check_divides(x.shape[dim], "a sequence")
        chunk = x.shape[dim] // self.size
        return x.narrow(dim, self.rank * chunk, chunk)

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """All chunks joined along ``dim``; backward is the reduce-scatter (sum) of the
        gradient."""
        return _AllGather.apply(x, dim, self.group)

    def shift(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Send ``x`` to group rank ``rank + step`` and return what rank ``rank - step`` sent
        (no autograd; see ``_RingShift``).

        Written as an all-to-all in which only one chunk is non-empty: the same traffic as a
        send/recv pair (NCCL runs it as grouped send/recv), on the collective's connections,
        where gloo's first point-to-point exchange on a group takes seconds to set up."""
        x = x.contiguous()
        out = torch.empty_like(x)
        send, recv = [0] * self.size, [0] * self.size
        send[(self.rank + step) % self.size] = 1
        recv[(self.rank - step) % self.size] = 1
        dist.all_to_all_single(out[None], x[None], output_split_sizes=recv, input_split_sizes=send,
                               group=self.group)
        return out

    # ---------------------------------------------------------------- attention
    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: Optional[torch.Tensor],
        local_attention: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """Local queries ``[B, H, N/P, d]`` attend to the keys of all ranks; returns the local
        chunk of the output. ``key_mask`` (``[B, N/P]``) is this rank's chunk of the key mask."""
        if self.mode == "ulysses":
            return self._ulysses(q, k, v, key_mask, local_attention)
        return self._ring(q, k, v, key_mask)

    def _seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, N/P, d]`` (all heads, my tokens) → ``[B, H/P, N, d]`` (my heads, all tokens)."""
        b, h, n, d = x.shape
        send = x.reshape(b, self.size, h // self.size, n, d).transpose(0, 1).contiguous()
        recv = _AllToAll.apply(send, self.group)
        # recv[j] holds rank j's tokens of my heads: join them in rank (= sequence) order
        return recv.permute(1, 2, 0, 3, 4).reshape(b, h // self.size, self.size * n, d)

    def _heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H/P, N, d]`` → ``[B, H, N/P, d]``: the inverse of :meth:`_seq_to_heads`."""
        b, hp, n, d = x.shape
        send = x.reshape(b, hp, self.size, n // self.size, d).permute(2, 0, 1, 3, 4).contiguous()
        recv = _AllToAll.apply(send, self.group)
        # recv[j] holds head group j of my tokens
        return recv.transpose(0, 1).reshape(b, hp * self.size, n // self.size, d)

    def _ulysses(self, q, k, v, key_mask, local_attention):
        heads = q.shape[1]
        if heads % self.size:
            raise ValueError(
                f"Ulysses sequence parallelism splits attention heads across the group: {heads} heads "
                f"do not divide by the sequence-parallel size {self.size}; use mode='ring' (any head "
                f"count) or a size that divides {heads}"
            )
        if key_mask is not None:  # every rank needs the whole key mask (small, no gradient)
            key_mask = self.gather(key_mask.to(torch.uint8), dim=1).bool()
        out = local_attention(self._seq_to_heads(q), self._seq_to_heads(k), self._seq_to_heads(v), key_mask)
        return self._heads_to_seq(out)

    def _ring(self, q, k, v, key_mask):
        # Online softmax over the K/V chunks as they arrive: keep the running row maximum m (a
        # stabiliser only, so it carries no gradient), the numerator sum(exp(s - m) v) and the
        # denominator sum(exp(s - m)); rescale both when m grows. Half precision accumulates in
        # float32. Each block's scores are recomputed in backward, so a step keeps O(N/P · d),
        # not the N/P × N/P score block.
        dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        q = q.to(dtype) * q.shape[-1] ** -0.5
        kv = torch.stack([k, v])
        mask = key_mask.bool() if key_mask is not None else None
        m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=dtype, device=q.device)
        num = torch.zeros_like(q)
        den = torch.zeros_like(m)
        for step in range(self.size):
            if step:
                kv = _RingShift.apply(kv, self)
                if mask is not None:
                    mask = self.shift(mask.to(torch.uint8), +1).bool()
            kb, vb = kv[0].to(dtype), kv[1].to(dtype)
            with torch.no_grad():
                scores = torch.matmul(q, kb.transpose(-2, -1))
                if mask is not None:
                    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
                m_new = torch.maximum(m, scores.amax(-1, keepdim=True))
                m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
                alpha = torch.exp(m - m_safe)
                del scores
            block_num, block_den = _RecomputedBlock.apply(q, kb, vb, mask, m_safe)
            num = num * alpha + block_num
            den = den * alpha + block_den
            m = m_new
        return (num / den).to(v.dtype)


def new_sequence_parallel_group(size: int, mode: Mode = "ulysses") -> SequenceParallelGroup:
    """Split the default process group into sequence-parallel groups of ``size`` consecutive
    ranks (``[0..P-1], [P..2P-1], ...``: one group per data-parallel replica) and return this
    rank's. Every rank must call it (group creation is collective).

    Consecutive ranks keep a group inside one node when ``size`` divides the GPUs per node,
    where the all-to-all traffic is cheapest.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sequence parallelism needs an initialised torch.distributed process group")
    world = dist.get_world_size()
    if size < 1 or world % size:
        raise ValueError(f"sequence-parallel size {size} must divide the world size {world} "
                         f"(world = data-parallel replicas × sequence-parallel size)")
    ranks = [list(range(start, start + size)) for start in range(0, world, size)]
    group, _ = dist.new_subgroups_by_enumeration(ranks)
    return SequenceParallelGroup(group, mode)
