"""Activation memory of one DiT block, measured: the bytes autograd keeps for backward.

Counts the distinct storages that one ``DiTBlock`` forward saves for backward (parameters
excluded) with ``torch.autograd.graph.saved_tensors_hooks``, and reports them per token per
hidden unit, the ``c`` of ``activation bytes ≈ c · tokens · hidden · bytes per value``. Then
applies it to an Open-Sora-sized STDiT (28 blocks, hidden 1152, patch 1×2×2, SD-VAE latents).

    python benchmarks/activation_memory.py

Runs on CPU in seconds. Attention is PyTorch SDPA, which keeps no tokens² score matrix
(as flash attention on GPU); the ``math`` backend would add ``heads · L²`` per attention.
"""

from __future__ import annotations

import argparse

import torch

from lvdm.models.dit import DiT


def values_per_token_hidden(layout: str, grid: tuple[int, int, int], hidden: int = 128, heads: int = 4) -> float:
    """Saved activation values of one cross-attention DiT block per token per hidden unit."""
    torch.manual_seed(0)
    model = DiT(in_channels=4, patch_size=(1, 2, 2), hidden_size=hidden, depth=1, num_heads=heads,
                conditioning="cross_attn", layout=layout, context_dim=hidden)
    block = model.blocks[0]
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    tokens = grid[0] * grid[1] * grid[2]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if layout == "full":
            block(torch.randn(2, tokens, hidden, requires_grad=True), torch.randn(2, hidden), grid,
                  torch.randn(2, 8, hidden), None)
        else:  # the spatial-temporal block: tokens [B, T, S, D], per-sample conditioning [B, 1, D]
            block(torch.randn(2, grid[0], grid[1] * grid[2], hidden, requires_grad=True), torch.randn(2, 1, hidden),
                  torch.randn(2, 8, hidden))
    return sum(saved.values()) / (2 * tokens * hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1152)
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--bytes", type=int, default=2, help="bytes per activation value (bf16: 2)")
    args = parser.parse_args()
    c = {layout: values_per_token_hidden(layout, (8, 8, 8)) for layout in ("spatial_temporal", "full")}
    for layout, value in c.items():
        print(f"{layout:17s} block keeps {value:.1f} values per token per hidden unit")
    print(f"\nSTDiT, {args.depth} blocks, hidden {args.hidden}, {args.bytes}-byte activations, per sample:")
    print("video         tokens   per block   all blocks   ckpt all   SP=4 no ckpt   SP=4 + ckpt")
    for frames, size in ((16, 256), (64, 512)):
        tokens = frames * (size // 8 // 2) ** 2  # SD-VAE 8x spatial, patch 1x2x2
        unit = tokens * args.hidden * args.bytes  # one tokens x hidden tensor
        block = c["spatial_temporal"] * unit
        ckpt = args.depth * unit + block  # stored block inputs + one block recomputed
        print(f"{frames}x{size}x{size:<5d} {tokens:7d} {block / 1e9:8.2f} GB {args.depth * block / 1e9:9.1f} GB "
              f"{ckpt / 1e9:7.2f} GB {args.depth * block / 4e9:10.1f} GB {ckpt / 4e9:11.2f} GB")


if __name__ == "__main__":
    main()
