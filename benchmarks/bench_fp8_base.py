"""Does a frozen base stored in FP8 train LoRA like a bf16 base? A tiny DiT, LoRA rank 4, the
same seed, data and adapter start; the base in bf16 against the base in FP8
(``lvdm.finetune.fp8.store_frozen_fp8``, per-tensor scaled, computed in bf16). Prints the bytes
of the frozen linears and of the whole frozen base, the output difference, and the loss of
every step (the acceptance: ≤ 0.55× the bytes, losses within 2 %).

    python benchmarks/bench_fp8_base.py              # 20 steps on the CPU
    python benchmarks/bench_fp8_base.py --steps 50
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lvdm.finetune.fp8 import Fp8Linear, store_frozen_fp8, stored_bytes
from lvdm.finetune.lora import apply_lora
from lvdm.models.dit import DiT


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The tiny DiT with LoRA, base in bf16 and adapters in float32; and a copy with the base in FP8."""
    torch.manual_seed(seed)
    model = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=64, depth=2, num_heads=2,
                conditioning="cross_attn", layout="full", context_dim=16)
    with torch.no_grad():  # random weights everywhere (the zero-initialised output layers would hide the base)
        for param in model.parameters():
            param.normal_(0, 0.1)
    apply_lora(model, rank=4)
    model.to(torch.bfloat16)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    fp8 = copy.deepcopy(model)
    store_frozen_fp8(fp8)
    return model, fp8


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 2, 8, 8, generator=g)
    inputs = (x.bfloat16(), torch.rand(4, generator=g).bfloat16(), torch.randn(4, 4, 16, generator=g).bfloat16(),
              torch.ones(4, 4, dtype=torch.bool))
    return inputs, torch.randn(x.shape, generator=g)


def _train(model: nn.Module, steps: int) -> list[float]:
    inputs, target = _data()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = (model(*inputs).float() - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def compare(steps: int = 20) -> list[tuple[int, float, float]]:
    """``(step, bf16 loss, fp8 loss)`` of each step."""
    bf16, fp8 = _models()
    return list(zip(range(1, steps + 1), _train(bf16, steps), _train(fp8, steps)))


def sizes() -> dict[str, float]:
    """Bytes of the frozen linears and of the whole frozen base, bf16 and FP8, and the output difference."""
    bf16, fp8 = _models()
    names = [n for n, m in fp8.named_modules() if isinstance(m, Fp8Linear)]
    frozen = [t for n, t in [*bf16.named_parameters(), *bf16.named_buffers()] if not t.requires_grad]
    fp8_frozen = [t for t in [*fp8.parameters(), *fp8.buffers()] if not t.requires_grad]
    inputs, _ = _data()
    with torch.no_grad():
        a, b = bf16(*inputs).float(), fp8(*inputs).float()
    return {"linears_bf16": sum(stored_bytes(bf16.get_submodule(n)) for n in names),
            "linears_fp8": sum(stored_bytes(fp8.get_submodule(n)) for n in names),
            "base_bf16": sum(t.numel() * t.element_size() for t in frozen),
            "base_fp8": sum(t.numel() * t.element_size() for t in fp8_frozen),
            "output_rel_diff": ((a - b).abs().max() / a.abs().max()).item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    s = sizes()
    print(f"frozen linears: bf16 {s['linears_bf16']:,} B, fp8 {s['linears_fp8']:,} B "
          f"({s['linears_fp8'] / s['linears_bf16']:.3f}x)")
    print(f"whole frozen base: bf16 {s['base_bf16']:,} B, fp8 {s['base_fp8']:,} B "
          f"({s['base_fp8'] / s['base_bf16']:.3f}x)")
    print(f"output max |fp8 - bf16| / max |bf16|: {s['output_rel_diff']:.4f}\n")
    print("| step | loss, bf16 base | loss, fp8 base | rel. diff |\n|---:|---:|---:|---:|")
    worst = 0.0
    for step, a, b in compare(args.steps):
        worst = max(worst, abs(b - a) / abs(a))
        print(f"| {step} | {a:.5f} | {b:.5f} | {abs(b - a) / abs(a):.2%} |")
    print(f"\nworst relative loss difference: {worst:.2%} (acceptance: within 2 %)")


if __name__ == "__main__":
    main()
