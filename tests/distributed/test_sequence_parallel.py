"""Sequence parallelism on CPU: gloo process groups of 2 and 4 ranks, float64.

Every rank also runs the single-process step itself (same seed, same weights, all data-parallel
batches at once), so each comparison is against an independent reference: the DiT without any
distributed code. Outputs must match, and the parameter gradients averaged over all ranks
(what DDP and DeepSpeed do) must equal the single-process gradient of the mean loss.
"""

from __future__ import annotations

import json
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lvdm.distributed.activation_checkpointing import apply_activation_checkpointing
from lvdm.distributed.plan import apply_sequence_split
from lvdm.distributed.sequence_parallel import SequenceParallelGroup, new_sequence_parallel_group
from lvdm.models.dit import DiT
from lvdm.ops.attention import attention, sequence_parallel

TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:  # other test runs share the machine: ask the OS for a free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- cases
def _case(name, *, layout, conditioning, mode, size, heads, ckpt=False, adaln_single=False, frame_t=False):
    return {"name": name, "layout": layout, "conditioning": conditioning, "mode": mode, "size": size,
            "heads": heads, "ckpt": ckpt, "adaln_single": adaln_single, "frame_t": frame_t}


CASES = {
    2: [
        _case("full-cross-ulysses", layout="full", conditioning="cross_attn", mode="ulysses", size=2, heads=4),
        _case("st-adaln-ulysses", layout="spatial_temporal", conditioning="adaln", mode="ulysses", size=2, heads=4),
        _case("full-adaln-ring-3heads", layout="full", conditioning="adaln", mode="ring", size=2, heads=3),
        _case("st-cross-ring-3heads-ckpt", layout="spatial_temporal", conditioning="cross_attn", mode="ring",
              size=2, heads=3, ckpt=True),
        _case("st-cross-ulysses-ckpt", layout="spatial_temporal", conditioning="cross_attn", mode="ulysses",
              size=2, heads=4, ckpt=True),
        # adaLN-single: the shared t_block runs once per sample outside the (checkpointed) blocks
        _case("st-cross-ulysses-adaln-single-ckpt", layout="spatial_temporal", conditioning="cross_attn",
              mode="ulysses", size=2, heads=4, ckpt=True, adaln_single=True),
        # masked-frame conditioning: per-frame timesteps (0 on given frames), their modulation
        # split along the frames like the tokens
        _case("st-adaln-ulysses-frame-t", layout="spatial_temporal", conditioning="adaln", mode="ulysses",
              size=2, heads=4, frame_t=True),
        _case("full-cross-ring-adaln-single-frame-t", layout="full", conditioning="cross_attn", mode="ring",
              size=2, heads=3, adaln_single=True, frame_t=True),
    ],
    4: [
        _case("full-cross-ulysses", layout="full", conditioning="cross_attn", mode="ulysses", size=4, heads=4),
        _case("st-cross-ulysses", layout="spatial_temporal", conditioning="cross_attn", mode="ulysses", size=4, heads=4),
        _case("full-adaln-ring-3heads", layout="full", conditioning="adaln", mode="ring", size=4, heads=3),
        _case("st-adaln-ring-3heads", layout="spatial_temporal", conditioning="adaln", mode="ring", size=4, heads=3),
        # 2 data-parallel replicas × sequence-parallel groups of 2
        _case("dp2-sp2-st-cross-ulysses", layout="spatial_temporal", conditioning="cross_attn", mode="ulysses",
              size=2, heads=4),
        _case("dp2-sp2-full-adaln-ring", layout="full", conditioning="adaln", mode="ring", size=2, heads=3),
    ],
}


def _model(case) -> DiT:
    hidden = 16 * case["heads"] if case["heads"] == 3 else 32
    torch.manual_seed(0)
    model = DiT(in_channels=2, patch_size=(1, 2, 2), hidden_size=hidden, depth=2, num_heads=case["heads"],
                conditioning=case["conditioning"], layout=case["layout"], context_dim=8,
                adaln_single=case.get("adaln_single", False)).double()
    with torch.no_grad():  # DiT starts as the identity with output 0: randomise every weight
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    apply_sequence_split(model)  # what the SequenceParallel callback does (no-op while SP is off)
    return model


def _inputs(replicas: int, frames: int = 4):
    g = torch.Generator().manual_seed(1)
    b = 2 * replicas
    x = torch.randn(b, 2, frames, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(b, generator=g, dtype=torch.float64) * 1000
    ctx = torch.randn(b, 5, 8, generator=g, dtype=torch.float64)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[0, 3:] = False  # padded captions
    mask[-1, 1:] = False
    w = torch.randn(b, 2, frames, 4, 4, generator=g, dtype=torch.float64)  # fixed loss weights
    return x, t, ctx, mask, w


def _run_case(case, world, rank, groups) -> dict:
    size = case["size"]
    replicas = world // size
    model = _model(case)
    x, t, ctx, mask, w = _inputs(replicas)
    if case.get("frame_t"):  # per-frame times with given frames (time 0) in different places
        t = t[:, None] * torch.linspace(1.0, 0.25, x.shape[2], dtype=t.dtype)
        t[0, 0] = t[1, 2] = t[-1, -1] = 0.0

    # reference: one process, no sequence parallelism, the mean over the replicas' losses
    reference = model(x, t, ctx, mask)
    loss = (reference * w).sum() / replicas
    ref_grads = torch.autograd.grad(loss, list(model.parameters()))

    if case["ckpt"]:
        apply_activation_checkpointing(model, 1.0)
    mine = slice(2 * (rank // size), 2 * (rank // size) + 2)  # this replica's batch
    sp = SequenceParallelGroup(groups[size], case["mode"])
    with sequence_parallel(sp):
        out = model(x[mine], t[mine], ctx[mine], mask[mine])
        (out * w[mine]).sum().backward()
    grad_error = 0.0
    for p, ref in zip(model.parameters(), ref_grads):
        g = p.grad.clone()
        dist.all_reduce(g)  # what DDP / DeepSpeed do: average over all data × sequence ranks
        grad_error = max(grad_error, (g / world - ref).abs().max().item())
    return {"out_error": (out - reference[mine]).abs().max().item(), "grad_error": grad_error,
            "grad_scale": max(r.abs().max().item() for r in ref_grads)}


def _attention_case(mode, world, rank, group) -> dict:
    """The attention function alone, with a key mask that hides one rank's whole chunk for
    some rows (the ring must survive a block with no visible key)."""
    g = torch.Generator().manual_seed(2)
    heads = 4 if mode == "ulysses" else 3
    q, k, v = (torch.randn(2, heads, 4 * world, 8, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = torch.ones(2, 4 * world, dtype=torch.bool)
    mask[0, :4] = False  # rank 0's whole chunk
    mask[1, 5::3] = False
    w = torch.randn(2, heads, 4 * world, 8, generator=g, dtype=torch.float64)
    reference = attention(q, k, v, key_mask=mask)
    ref_grads = torch.autograd.grad((reference * w).sum(), [q, k, v])
    sp = SequenceParallelGroup(group, mode)
    local = slice(4 * rank, 4 * rank + 4)
    with sequence_parallel(sp):
        out = attention(q[:, :, local], k[:, :, local], v[:, :, local], key_mask=mask[:, local], sharded=True)
    grads = torch.autograd.grad((out * w[:, :, local]).sum(), [q, k, v])
    grad_error = 0.0
    for gr, ref in zip(grads, ref_grads):
        total = gr.clone()
        dist.all_reduce(total)  # every rank fed its own chunk of the same full q, k, v
        grad_error = max(grad_error, (total - ref).abs().max().item())
    return {"out_error": (out - reference[:, :, local]).abs().max().item(), "grad_error": grad_error,
            "grad_scale": max(r.abs().max().item() for r in ref_grads)}


def _error(fn) -> str:
    try:
        fn()
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _error_cases(world, groups) -> dict:
    errors = {}
    ulysses = SequenceParallelGroup(groups[world], "ulysses")
    three_heads = _model(_case("", layout="full", conditioning="adaln", mode="ulysses", size=world, heads=3))
    x, t, ctx, mask, _ = _inputs(1)
    with sequence_parallel(ulysses):
        errors["heads"] = _error(lambda: three_heads(x, t, ctx, mask))
        four_heads = _model(_case("", layout="spatial_temporal", conditioning="cross_attn", mode="ulysses",
                                  size=world, heads=4))
        x3, *_ = _inputs(1, frames=3)
        errors["frames"] = _error(lambda: four_heads(x3, t, ctx, mask))
        in_context = _model(_case("", layout="full", conditioning="in_context", mode="ulysses", size=world, heads=4))
        errors["in_context"] = _error(lambda: in_context(x, t, ctx, mask))
        errors["shard"] = _error(lambda: ulysses.shard(torch.zeros(1, 2 * world + 1), dim=1))
    errors["group_size"] = _error(lambda: new_sequence_parallel_group(world + 1))
    return errors


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    try:
        groups = {size: new_sequence_parallel_group(size).group for size in sorted({world, 2})}
        for case in CASES[world]:
            results[case["name"]] = _run_case(case, world, rank, groups)
        for mode in ("ulysses", "ring"):
            results[f"attention-{mode}"] = _attention_case(mode, world, rank, groups[world])
        results["errors"] = _error_cases(world, groups)
    except Exception:  # report, so the parent test shows what failed on which rank
        results["crash"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


_RESULTS: dict[int, list[dict]] = {}


def _results(world: int, tmp_path_factory) -> list[dict]:
    """Run all cases of one world size in one spawn (process start-up dominates the cost)."""
    if world not in _RESULTS:
        out = tmp_path_factory.mktemp(f"sp{world}")
        mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, start_method="spawn")
        _RESULTS[world] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
        for rank, result in enumerate(_RESULTS[world]):
            assert "crash" not in result, f"rank {rank} of {world} crashed:\n{result['crash']}"
    return _RESULTS[world]


CASE_IDS = [(world, case["name"]) for world in CASES for case in CASES[world]]
CASE_IDS += [(world, f"attention-{mode}") for world in CASES for mode in ("ulysses", "ring")]


@pytest.mark.parametrize("world,name", CASE_IDS, ids=[f"world{w}-{n}" for w, n in CASE_IDS])
def test_sequence_parallel_matches_single_process(world, name, tmp_path_factory):
    for rank, result in enumerate(_results(world, tmp_path_factory)):
        r = result[name]
        assert r["grad_scale"] > 1e-3, "the reference gradients are ~0: the test could not fail"
        assert r["out_error"] <= TOL, f"rank {rank}: output differs by {r['out_error']:.3g}"
        assert r["grad_error"] <= TOL, f"rank {rank}: gradient differs by {r['grad_error']:.3g}"


@pytest.mark.parametrize("kind,expect", [
    ("heads", ["3 heads", "sequence-parallel size 2", "mode='ring'"]),
    ("frames", ["3 frames", "not divisible", "size 2"]),
    ("in_context", ["in_context", "adaln or cross_attn"]),
    ("shard", ["length 5", "2 ranks"]),
    ("group_size", ["size 3", "world size 2"]),
])
def test_clear_errors(kind, expect, tmp_path_factory):
    message = _results(2, tmp_path_factory)[0]["errors"][kind]
    assert message.startswith("ValueError"), message
    for fragment in expect:
        assert fragment in message, message
