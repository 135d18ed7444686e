"""Does fusing pay? One lvdm DiT block (STDiT, cross-attention), forward + backward, eager
against ``torch.compile`` (inductor fuses the adaLN modulate into the LayerNorm, the gates
into the residual adds, GELU into its matmul's epilogue).

    python benchmarks/bench_block.py                                  # CPU, reduced size
    python benchmarks/bench_block.py --device cuda --dtype bf16 --hidden 1152 --heads 16 --latent 16 32 32 --batch 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lvdm.models.dit import SpatialTemporalBlock  # noqa: E402


def measure(block, args, device, dtype, iters):
    t, h, w = args.latent
    x = torch.randn(args.batch, t, h * w, args.hidden, device=device, dtype=dtype, requires_grad=True)
    c = torch.randn(args.batch, 1, args.hidden, device=device, dtype=dtype)  # per sample
    ctx = torch.randn(args.batch, args.text_len, args.hidden, device=device, dtype=dtype)

    def step():
        block(x, c, ctx).float().square().mean().backward()

    step()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--latent", type=int, nargs=3, default=[8, 8, 8], help="token grid t h w")
    parser.add_argument("--text_len", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    block = SpatialTemporalBlock(args.hidden, args.heads, conditioning="cross_attn").to(device, dtype)
    eager = measure(block, args, device, dtype, args.iters)
    start = time.perf_counter()
    block.compile()
    compiled = measure(block, args, device, dtype, args.iters)
    compile_s = time.perf_counter() - start - compiled * args.iters
    print(f"# bench_block device={args.device} dtype={args.dtype} hidden={args.hidden} tokens={args.latent} "
          f"batch={args.batch} torch={torch.__version__}")
    print("| block fwd+bwd | ms | speed-up |\n|---|---:|---:|")
    print(f"| eager | {1000 * eager:.1f} | 1.00× |")
    print(f"| torch.compile (inductor) | {1000 * compiled:.1f} | {eager / compiled:.2f}× |")
    print(f"# compile time ≈ {compile_s:.0f} s")


if __name__ == "__main__":
    main()
