"""Numerical parity of lvdm's MMDiT (Open-Sora 2.0 options) with Open-Sora 2.0's own MMDiT code.

Not part of the test suite: it runs hpcaitech/Open-Sora's ``opensora/models/mmdit`` from a
checkout you provide, which lvdm neither ships nor imports. Its modules import GPU-only packages
(flash-attn, liger-kernel) and Open-Sora's training stack (registry, checkpointing); this script
replaces them with stand-ins that do what those calls do on CPU (``flash_attn_func`` = SDPA in its
``[B, L, H, D]`` layout; Liger's RMSNorm = the RMSNorm formula; a no-op registry and checkpoint)
and turns ``torch.compile`` into the identity, so the model code itself runs unchanged.

    git -C Open-Sora archive HEAD opensora/models/mmdit | tar -x -C /tmp/os2
    PYTHONPATH=src python scripts/opensora2_parity.py --checkout /tmp/os2

A tiny random model (2 double + 2 single blocks, float32, image condition on) in both layouts
(``fused_qkv``) with and without the guidance embedding, T in {1, 5, 9} latent frames on a
non-square grid: prints max |lvdm - Open-Sora| / max |Open-Sora| and fails above 1e-5.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch
import torch.nn.functional as F


def module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m


class _RMS:
    @staticmethod
    def apply(x, scale, eps, *_):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * scale


def stand_ins() -> None:
    """The stand-ins for the packages Open-Sora's MMDiT imports (see the module docstring)."""
    module("flash_attn", flash_attn_func=lambda q, k, v: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2))
    module("liger_kernel")
    module("liger_kernel.ops")
    module("liger_kernel.ops.rms_norm", LigerRMSNormFunction=_RMS)
    module("liger_kernel.ops.rope", LigerRopeFunction=None)
    module("opensora.acceleration")
    module("opensora.acceleration.checkpoint", auto_grad_checkpoint=lambda b, *a: b(*a))
    module("opensora.registry", MODELS=types.SimpleNamespace(register_module=lambda name: (lambda f: f)))
    module("opensora.utils")
    module("opensora.utils.ckpt", load_checkpoint=None)


def run(guidance_embed: bool, fused_qkv: bool) -> float:
    from einops import rearrange
    from opensora.models.mmdit.model import MMDiTConfig, MMDiTModel

    from lvdm.models.convert.opensora2 import convert_state_dict, mmdit_kwargs
    from lvdm.models.mmdit import MMDiT

    cfg = dict(in_channels=16, vec_in_dim=8, context_in_dim=16, hidden_size=24, mlp_ratio=4.0, num_heads=2, depth=2,
               depth_single_blocks=2, axes_dim=[4, 4, 4], theta=10000, qkv_bias=True, guidance_embed=guidance_embed,
               cond_embed=True, fused_qkv=fused_qkv)
    torch.manual_seed(0)
    ref = MMDiTModel(MMDiTConfig(from_pretrained=None, cache_dir=None, **cfg)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = MMDiT(**mmdit_kwargs(cfg)).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), ours.state_dict()), strict=True)
    worst = 0.0
    for frames in (1, 5, 9):
        g = torch.Generator().manual_seed(frames)
        x = torch.randn(2, 4, frames, 4, 6, generator=g)
        cond = torch.randn(2, 5, frames, 4, 6, generator=g)
        txt, y = torch.randn(2, 7, 16, generator=g), torch.randn(2, 8, generator=g)
        t = torch.tensor([0.3, 0.7])
        guidance = torch.tensor([4.0, 2.5])

        def pack(v):
            return rearrange(v, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=2, pw=2)

        ids = torch.zeros(frames, 2, 3, 3)
        ids[..., 0] += torch.arange(frames)[:, None, None]
        ids[..., 1] += torch.arange(2)[None, :, None]
        ids[..., 2] += torch.arange(3)[None, None, :]
        ids = ids.reshape(1, -1, 3).expand(2, -1, -1)
        with torch.no_grad():
            out = ref(pack(x), ids, txt, torch.zeros(2, 7, 3), t, y, cond=pack(cond),
                      guidance=guidance if guidance_embed else None)
            expected = rearrange(out, "b (t h w) (c ph pw) -> b c t (h ph) (w pw)", t=frames, h=2, w=3, ph=2, pw=2)
            mine = ours(x, t * 1000, txt, None, pooled_text=y, image_condition=cond,
                        guidance=guidance if guidance_embed else None)
        error = ((mine - expected).abs().max() / expected.abs().max()).item()
        worst = max(worst, error)
        print(f"guidance_embed={guidance_embed} fused_qkv={fused_qkv} T={frames}: max |lvdm - Open-Sora| / "
              f"max |Open-Sora| = {error:.2e} (max |Open-Sora| = {expected.abs().max():.1f})")
    return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", required=True, help="folder holding Open-Sora's opensora/ package")
    sys.path.insert(0, parser.parse_args().checkout)
    torch.compile = lambda *a, **k: (lambda f: f)  # Open-Sora compiles its timestep embedding for GPUs
    stand_ins()
    worst = max(run(g, f) for g in (False, True) for f in (False, True))
    print(f"worst relative difference: {worst:.2e}")
    assert worst <= 1e-5
