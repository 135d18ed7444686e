"""Predicted against measured memory of LoRA fine-tuning steps: what ``lvdm estimate --lora R
--fp8_base --block_swap N`` predicts (:mod:`lvdm.finetune.memory` on the meta backbone, the
activations by ``lvdm.perf.estimate.MemoryModel``) beside what one real training step holds, for
a plain LoRA, an FP8 base, an FP8 base with block swap and activation checkpointing, 8-bit AdamW
states (where bitsandbytes is installed) and a full fine-tune of a DiT.

What is measured:

* on CUDA: ``torch.cuda.max_memory_allocated`` over a training step (forward, backward,
  optimizer step; the second step, so the optimizer states exist), against the predicted peak;
* on the CPU, where no allocator peak is kept (and a process's RSS mixes in Python and every
  library), what the tensors hold: parameters left on the device, gradients, optimizer states
  and the host copies of swapped blocks, counted from the tensors after the step, and the
  activations autograd saves for the backward during the forward (``saved_tensors_hooks``, each
  storage once, the model's own weights left out: an FP8 base's dequantised weights stay in) against
  the prediction without its recomputed block (with the dequantised weights). "states on device" leaves out the swapped blocks
  in flight (the peak adds them). Under activation
  checkpointing the saved block inputs are held by the checkpoint itself, out of the hooks'
  sight, so that row shows no activation measurement on the CPU.

    python benchmarks/bench_lowmem.py                          # a small DiT on the CPU
    python benchmarks/bench_lowmem.py --device cuda --hidden_size 1152 --depth 28 --frames 16 --size 32
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lvdm.distributed.activation_checkpointing import apply_activation_checkpointing
from lvdm.finetune.block_swap import enable_block_swap
from lvdm.finetune.memory import fp8_dequantized_bytes, peak_bytes, prepare_finetune, state_bytes
from lvdm.models.flops import patch_grid
from lvdm.perf.estimate import MemoryModel, build_backbone

DIT = "lvdm.models.dit.DiT"
#: name → (LoRA rank, fp8 base, blocks swapped, checkpointing, optimizer)
CONFIGS = {
    "lora": (8, False, 0, False, "adamw"),
    "lora + fp8 base": (8, True, 0, False, "adamw"),
    "lora + fp8 + swap + ckpt": (8, True, 2, True, "adamw"),
    "lora + 8-bit adamw": (8, False, 0, False, "adamw8bit"),
    "full fine-tune": (0, False, 0, False, "adamw"),
}


def _kwargs(args) -> dict:
    return dict(in_channels=4, patch_size=(1, 2, 2), hidden_size=args.hidden_size, depth=args.depth,
                num_heads=args.heads, conditioning="cross_attn", layout="full", context_dim=args.context_dim)


def _inputs(args, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.frames, args.size, args.size, generator=g)
    context = torch.randn(args.batch, args.text_len, args.context_dim, generator=g)
    mask = torch.ones(args.batch, args.text_len, dtype=torch.bool)
    return [t.to(device) for t in (x, torch.rand(args.batch, generator=g), context, mask)]


def predict(args, config: tuple) -> dict:
    """The prediction of ``lvdm estimate`` for ``config`` (see :data:`CONFIGS`)."""
    rank, fp8, swap, ckpt, optimizer = config
    latent = (args.frames, args.size, args.size)
    mem = MemoryModel.from_model(build_backbone(DIT, _kwargs(args)), latent, args.text_len)
    tokens = args.batch * math.prod(patch_grid((1, 2, 2), latent))
    states = state_bytes(prepare_finetune(build_backbone(DIT, _kwargs(args)), rank, fp8_base=fp8), optimizer, swap)
    fraction = 1.0 if ckpt else 0.0
    copies = (0, 0)
    if fp8:
        x, t, context, mask = (v.to("meta") for v in _inputs(args, torch.device("cpu")))
        model = prepare_finetune(build_backbone(DIT, _kwargs(args)), rank, fp8_base=True)
        copies = fp8_dequantized_bytes(model, (x.bfloat16(), t), dict(context=context.bfloat16(), context_mask=mask))
    peak = peak_bytes(states, mem.activation_bytes(tokens, fraction), fraction, copies)
    recompute = max(mem.unit_values) * 2 * tokens if ckpt else 0.0
    resident = peak["total"] - peak["activations"] - peak["swapped_on_device"]
    resident -= peak["fp8_dequantized"]
    saved = peak["activations"] - recompute + (0.0 if ckpt else peak["fp8_dequantized"])
    return {**states, "peak": peak["total"], "saved": saved, "device_states": resident}


def _optimizer(params, name: str):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4)
    from lvdm.finetune.optim8bit import AdamW8bit

    return AdamW8bit(params, lr=1e-4)


def _saved_bytes(step, model: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """The loss of ``step()`` and the bytes autograd saves for the backward while its forward
    runs (each storage once; the model's own parameters and buffers, counted as states, left out)."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    return loss, sum(seen.values())


def measure(args, config: tuple, device: torch.device) -> dict:
    """One real model under ``config``, two training steps; what the second one holds."""
    rank, fp8, swap, ckpt, optimizer = config
    from lvdm.models.dit import DiT

    torch.manual_seed(0)
    model = prepare_finetune(DiT(**_kwargs(args)), rank, fp8_base=fp8).to(device)
    if ckpt:
        apply_activation_checkpointing(model, 1.0)
    state = enable_block_swap(model, swap, device) if swap else None
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], optimizer)
    x, t, context, mask = _inputs(args, device)
    dtype = torch.bfloat16
    for step in range(2):
        if device.type == "cuda" and step == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        loss, saved = _saved_bytes(lambda: model(x.to(dtype), t, context=context.to(dtype),
                                                 context_mask=mask).float().square().mean(), model)
        loss.backward()
        opt.step()
        if step == 0:
            opt.zero_grad(set_to_none=True)
    out = {"saved": None if ckpt else saved, "peak": None}
    if device.type == "cuda":
        out["peak"] = torch.cuda.max_memory_allocated(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    host = sum(v.numel() * v.element_size() for block in (state.host if state else []) for v in block.values())
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad) - host
    states = {id(v): v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    out["device_states"] = (frozen + sum(b.numel() * b.element_size() for b in model.buffers())
                            + 2 * sum(p.numel() * p.element_size() for p in trainable)
                            + sum(v.numel() * v.element_size() for v in states.values()))
    out["host_swapped"] = host
    return out


def _mb(value) -> str:
    return "—" if value is None else f"{value / 2**20:.2f}"


def table(args, device: torch.device) -> list[dict]:
    """Predicted and measured MiB per configuration, printed as a table; returns the rows."""
    try:
        import bitsandbytes  # noqa: F401
        configs = CONFIGS
    except ImportError:
        configs = {k: v for k, v in CONFIGS.items() if v[4] != "adamw8bit"}
    print(f"DiT D={args.hidden_size} depth {args.depth}, latent {args.frames}x{args.size}x{args.size}, batch "
          f"{args.batch}, bf16 weights, on {device} (MiB: predicted / measured)")
    print(f"| {'config':<25} | {'states on device':>19} | {'host (swapped)':>17} | {'saved activations':>19} "
          f"| {'peak':>19} |")
    print("|" + "|".join("-" * n for n in (27, 21, 19, 21, 21)) + "|")
    rows = []
    for name, config in configs.items():
        p, m = predict(args, config), measure(args, config, device)
        rows.append({"config": name, "predicted": p, "measured": m})
        cells = [(p["device_states"], m["device_states"]), (p["host_swapped"], m["host_swapped"]),
                 (p["saved"], m["saved"]), (p["peak"], m["peak"])]
        print(f"| {name:<25} | " + " | ".join(f"{_mb(a):>8} / {_mb(b):>8}" for a, b in cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context_dim", type=int, default=64)
    parser.add_argument("--text_len", type=int, default=16)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    return table(args, torch.device(args.device))


if __name__ == "__main__":
    main()
