"""Numerical parity of lvdm's STDiT with Open-Sora's own STDiT (v1.0) and STDiT3 (v1.2) code.

Not part of the test suite: it runs Open-Sora's model code from a checkout you provide, which
lvdm neither ships nor imports. Open-Sora's modules import CUDA-only or heavy packages
(xformers, timm, colossalai, mmengine); this script replaces them with small stand-ins that do
what those calls do on CPU (``xformers.ops.memory_efficient_attention`` with a block-diagonal
mask = masked attention per sample; timm's ``Mlp`` = fc1 → act → fc2; no-op registries and
sequence-parallel helpers), so the model code itself runs unchanged. Needs
``rotary_embedding_torch`` (STDiT3's RoPE) on the path.

    git -C Open-Sora archive v1.2.0 opensora | tar -x -C /tmp/os12
    git -C Open-Sora archive v1.0.0 opensora | tar -x -C /tmp/os10
    pip install --target /tmp/osdeps --no-deps rotary-embedding-torch
    PYTHONPATH=src:/tmp/osdeps python scripts/opensora_parity.py --checkout /tmp/os12 --model stdit3
    PYTHONPATH=src:/tmp/osdeps python scripts/opensora_parity.py --checkout /tmp/os10 --model stdit

Prints the max abs difference of the outputs (float32, tiny random model, padded captions),
with lvdm's ``math`` attention backend (Open-Sora's own CPU formula) and with SDPA.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class _BlockDiagonalMask:
    """xformers' block-diagonal attention bias: query block i attends to key block i only."""

    def __init__(self, q_lens, kv_lens):
        self.q_lens, self.kv_lens = list(q_lens), list(kv_lens)

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(q_seqlen, kv_seqlen if kv_seqlen is not None else q_seqlen)

    def dense(self) -> torch.Tensor:
        mask = torch.zeros(sum(self.q_lens), sum(self.kv_lens), dtype=torch.bool)
        q0 = k0 = 0
        for nq, nk in zip(self.q_lens, self.kv_lens):
            mask[q0:q0 + nq, k0:k0 + nk] = True
            q0, k0 = q0 + nq, k0 + nk
        return mask


def _memory_efficient_attention(q, k, v, p=0.0, attn_bias=None):
    """xformers' BMHK attention on CPU."""
    mask = attn_bias.dense() if attn_bias is not None else None
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class _Mlp(nn.Module):
    """timm's Mlp (fc1 → act → fc2; dropout 0)."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def install_stand_ins(checkout: Path) -> None:
    ops = _module("xformers.ops", memory_efficient_attention=_memory_efficient_attention,
                  fmha=_module("xformers.ops.fmha", BlockDiagonalMask=_BlockDiagonalMask))
    _module("xformers", ops=ops)
    _module("timm")
    _module("timm.models")
    _module("timm.models.layers", DropPath=nn.Identity)
    _module("timm.models.vision_transformer", Mlp=_Mlp)
    root = _module("opensora", __path__=[str(checkout / "opensora")])
    _module("opensora.acceleration")
    _module("opensora.acceleration.checkpoint", auto_grad_checkpoint=lambda block, *args, **kw: block(*args, **kw))
    _module("opensora.acceleration.communications", all_to_all=None, split_forward_gather_backward=None,
            gather_forward_split_backward=None)
    _module("opensora.acceleration.parallel_states", get_sequence_parallel_group=None)
    registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda obj: obj))
    _module("opensora.registry", MODELS=registry)
    _module("opensora.utils")
    _module("opensora.utils.ckpt_utils", load_checkpoint=None)
    # the model packages without their __init__ (which imports every model and its dependencies)
    for pkg in ("models", "models.layers", "models.stdit"):
        _module(f"opensora.{pkg}", __path__=[str(checkout / "opensora" / pkg.replace(".", "/"))])
    assert root


def _randomise(model: nn.Module) -> None:
    """Random values in every learned weight (``rope.freqs`` is a fixed code held as a parameter)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "rope.freqs":
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _text(b: int, length: int, dim: int):
    y = torch.randn(b, 1, length, dim, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, length // 2:] = 0
    return y, mask


def run_stdit3() -> float:
    from lvdm.models.convert import opensora
    from lvdm.models.presets import preset

    stdit3 = importlib.import_module("opensora.models.stdit.stdit3")
    ref = stdit3.STDiT3(stdit3.STDiT3Config(depth=2, hidden_size=64, num_heads=4, caption_channels=32,
                                            model_max_length=10, qk_norm=True)).eval()
    _randomise(ref)
    model = preset("opensora-v1.2-stdit3-xl2", hidden_size=64, depth=2, num_heads=4, context_dim=32,
                   context_length=10).eval()
    model.load_state_dict(opensora.convert_state_dict(ref.state_dict(), model), strict=True)
    b = 2
    x = torch.randn(b, 4, 3, 6, 10, generator=torch.Generator().manual_seed(2))  # a non-square latent
    t = torch.tensor([10.0, 700.0])
    y, mask = _text(b, 10, 32)
    fps = torch.tensor([24.0, 8.0])
    # STDiT3 scales positions by sqrt(h·w) / 512 of the pixel size: 48 × 80 px through an 8× VAE
    height, width = torch.tensor([48.0, 48.0]), torch.tensor([80.0, 80.0])
    with torch.no_grad():
        want = ref(x, t, y, mask=mask, fps=fps, height=height, width=width)[:, :4]
        got = model(x, t, y[:, 0], mask.bool(), fps=fps)  # resolution from the latent × latent_scale 8
    return (got - want).abs().max().item()


def run_stdit() -> float:
    from lvdm.models.convert import opensora
    from lvdm.models.presets import preset

    stdit = importlib.import_module("opensora.models.stdit.stdit")
    ref = stdit.STDiT(input_size=(3, 8, 8), depth=2, hidden_size=64, num_heads=4, caption_channels=32,
                      model_max_length=10, space_scale=0.5).eval()
    _randomise(ref)
    model = preset("opensora-v1.0-stdit-xl2", hidden_size=64, depth=2, num_heads=4, context_dim=32,
                   context_length=10).eval()
    model.load_state_dict(opensora.convert_state_dict(ref.state_dict(), model), strict=True)
    b = 2
    x = torch.randn(b, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10.0, 700.0])
    y, mask = _text(b, 10, 32)
    with torch.no_grad():
        want = ref(x, t, y, mask=mask)[:, :4]
        got = model(x, t, y[:, 0], mask.bool())
    return (got - want).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, required=True, help="folder holding Open-Sora's opensora/ package")
    parser.add_argument("--model", choices=["stdit", "stdit3"], required=True)
    args = parser.parse_args()
    install_stand_ins(args.checkout)
    from lvdm.ops.attention import use_backend

    run = run_stdit3 if args.model == "stdit3" else run_stdit
    # Open-Sora's CPU path is an explicit matmul → softmax → matmul: lvdm's `math` backend is the
    # like-for-like comparison; SDPA accumulates differently (STDiT v1.0's temporal attention on
    # un-normalised tokens amplifies that rounding).
    for backend in ("math", "sdpa"):
        with use_backend(backend):
            diff = run()
        print(f"{args.model}: max |lvdm - Open-Sora| = {diff:.3g} with lvdm's {backend} attention "
              "(float32, tiny random model, padded captions)")


if __name__ == "__main__":
    main()
