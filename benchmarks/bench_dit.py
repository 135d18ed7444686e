"""lvdm's DiT against diffusers' LatteTransformer3DModel: one training step and a 50-step
classifier-free-guided sampling run, same configuration, same inputs, same process.

    python benchmarks/bench_dit.py --preset cpu-smoke            # CI smoke test (tiny, CPU)
    python benchmarks/bench_dit.py --preset h100 --dtype bf16     # STDiT-XL/2 at 16×256×256
    python benchmarks/bench_dit.py --preset long-clip --dtype bf16 --models lvdm   # 64×512×512, checkpointing

Both models: hidden 1152, 16 heads, 28 layers, patch 2, T5-width captions (4096) of 120
tokens, latent 4×16×32×32 (16×256×256 video through an 8× VAE) for ``h100``. lvdm runs its
``spatial_temporal`` layout with ``cross_attn`` conditioning and adaLN-single modulation
(STDiT: one shared modulation linear plus a learned table per block, ~764M parameters at
XL/2, as Open-Sora's "724M" = 724·2²⁰ STDiT-XL/2; ``--adaln per_block`` benchmarks the 1.09B
variant with one adaLN linear per block instead). Latte (``norm_type="ada_norm_single"``,
adaLN-single too) is a spatial block
with cross-attention followed by a temporal block, each with its own MLP, so it does more
FLOPs per layer at the same width and depth — the table prints parameters and FLOPs of both,
and the ratios both as time and as achieved FLOP/s. ``lvdm-latte`` is lvdm's STDiT in Latte's
exact layout (weights convert one to one, outputs agree to 1e-5): the same architecture as
diffusers' Latte, so its ratio measures the code alone; its FLOPs are slightly lower only because
it projects the caption's keys and values once per clip where Latte does it once per frame.

Training: AdamW, MSE on a rectified-flow target, forward + backward + optimizer step. ``--dtype
bf16`` runs both models and their optimizers wholly in bf16; add ``--mixed`` for fp32 weights
with bf16 autocast (what ``trainer.precision: bf16-mixed`` does).
Sampling: lvdm's Euler sampler with CFG (conditional and unconditional in one batch) driving
each model. FLOPs: ``torch.utils.flop_counter`` on the ``meta`` device for both models (the
training convention is 3 × forward for both). Prints one table; ``--json`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lvdm.diffusion.objectives import RectifiedFlow  # noqa: E402
from lvdm.models.dit import DiT  # noqa: E402
from lvdm.ops.attention import set_backend  # noqa: E402
from lvdm.distributed.compile import compile_blocks  # noqa: E402
from lvdm.perf.step_flops import count_flops, dit_forward_flops  # noqa: E402
from lvdm.perf.hardware import device_peak_flops  # noqa: E402

PRESETS = {
    # tiny: runs in seconds on 2 CPU cores; proves both models run through the same harness
    "cpu-smoke": dict(hidden=64, heads=4, depth=2, patch=2, latent=(4, 4, 8, 8), text_len=12, context_dim=32,
                      batch=2, sample_batch=1, sampling_steps=3, train_iters=2, warmup=1, checkpointing=False),
    # a reduced size for a CPU measurement that still has real work in it
    "cpu": dict(hidden=256, heads=4, depth=4, patch=2, latent=(4, 8, 16, 16), text_len=32, context_dim=128,
                batch=2, sample_batch=1, sampling_steps=5, train_iters=3, warmup=1, checkpointing=False),
    # STDiT-XL/2-sized at 16×256×256 (latent 16×32×32 → 4096 tokens), 120 T5 tokens
    "h100": dict(hidden=1152, heads=16, depth=28, patch=2, latent=(4, 16, 32, 32), text_len=120, context_dim=4096,
                 batch=8, sample_batch=1, sampling_steps=50, train_iters=10, warmup=3, checkpointing=False),
    # 64×512×512 (latent 64×64×64 → 65,536 tokens) with activation checkpointing, training only
    "long-clip": dict(hidden=1152, heads=16, depth=28, patch=2, latent=(4, 64, 64, 64), text_len=120,
                      context_dim=4096, batch=1, sample_batch=1, sampling_steps=0, train_iters=5, warmup=2,
                      checkpointing=True),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_lvdm(cfg, device, dtype):
    c, t, h, w = cfg["latent"]
    model = DiT(in_channels=c, hidden_size=cfg["hidden"], depth=cfg["depth"], num_heads=cfg["heads"],
                patch_size=(1, cfg["patch"], cfg["patch"]), conditioning="cross_attn", layout="spatial_temporal",
                context_dim=cfg["context_dim"], adaln_single=cfg.get("adaln", "single") == "single")
    return model.to(device=device, dtype=dtype)


def build_latte(cfg, device, dtype):
    from diffusers import LatteTransformer3DModel

    c, t, h, w = cfg["latent"]
    model = LatteTransformer3DModel(
        num_attention_heads=cfg["heads"], attention_head_dim=cfg["hidden"] // cfg["heads"], in_channels=c,
        out_channels=c, num_layers=cfg["depth"], cross_attention_dim=cfg["hidden"],
        caption_channels=cfg["context_dim"], sample_size=h, patch_size=cfg["patch"],
        activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False,
        norm_eps=1e-6, attention_bias=True, num_embeds_ada_norm=1000, video_length=t,
    )
    return model.to(device=device, dtype=dtype)


def build_lvdm_latte(cfg, device, dtype):
    """lvdm's STDiT in Latte's exact layout (the converter's reading of the same Latte config):
    same architecture and parameters as ``build_latte`` — only the code differs."""
    from lvdm.models.convert import latte
    from lvdm.models.stdit import STDiT

    with torch.device("meta"):
        config = build_latte(cfg, torch.device("meta"), torch.float32).config
    return STDiT(**latte.stdit_kwargs(config)).to(device=device, dtype=dtype)


BUILDERS = {"lvdm": build_lvdm, "latte": build_latte, "lvdm-latte": build_lvdm_latte}
LABELS = {"lvdm": "lvdm DiT (STDiT)", "latte": "diffusers Latte", "lvdm-latte": "lvdm STDiT, Latte layout"}


class LatteFn(torch.nn.Module):
    """Latte called with lvdm's denoiser signature ``(x, t, context, mask)``.

    diffusers' Latte hands the caption mask unchanged to its spatial blocks, which run on
    ``batch × frames`` sequences, so a ``[B, L]`` mask fails there (its pipeline passes none);
    the mask is repeated per frame here so that both models attend to the same tokens."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, context=None, context_mask=None):
        if context_mask is not None:
            context_mask = context_mask.repeat_interleave(x.shape[2], dim=0)
        return self.model(x, t, context, context_mask, return_dict=False)[0]


def make_inputs(cfg, batch, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, t, h, w = cfg["latent"]
    x0 = torch.randn(batch, c, t, h, w, generator=g)
    noise = torch.randn(batch, c, t, h, w, generator=g)
    ctx = torch.randn(batch, cfg["text_len"], cfg["context_dim"], generator=g)
    mask = torch.ones(batch, cfg["text_len"], dtype=torch.bool)
    mask[:, (2 * cfg["text_len"]) // 3 :] = False  # captions padded to the common length
    tt = torch.rand(batch, generator=g)
    return (x0.to(device, dtype), noise.to(device, dtype), ctx.to(device, dtype), mask.to(device), tt.to(device, dtype))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _apply_checkpointing(name, model):
    if name != "latte":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, model.block_class))
    else:
        model.enable_gradient_checkpointing()


def bench_training(fn, params, inputs, cfg, device):
    x0, noise, ctx, mask, t = inputs
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def step():
        tb = t.view(-1, 1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * noise
        pred = fn(x_t, t * 1000, ctx, mask)
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(cfg["warmup"]):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(cfg["train_iters"]):
        step()
    _sync(device)
    elapsed = (time.perf_counter() - start) / cfg["train_iters"]
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    del opt
    return elapsed, peak


@torch.no_grad()
def bench_sampling(fn, cfg, device, dtype, guidance=4.0):
    from lvdm.diffusion.guidance import GuidedDenoiser

    if not cfg["sampling_steps"]:
        return None
    _, noise, ctx, mask, _ = make_inputs(cfg, cfg["sample_batch"], device, dtype, seed=1)
    null_ctx = torch.zeros_like(ctx[:1])
    null_mask = torch.zeros_like(mask[:1])
    null_mask[:, 0] = True
    guided = GuidedDenoiser(fn, ctx, mask, null_ctx, null_mask, guidance)
    flow = RectifiedFlow(num_sampling_steps=cfg["sampling_steps"])
    flow.sample(guided, noise, 2)  # warm-up (and compile)
    _sync(device)
    start = time.perf_counter()
    flow.sample(guided, noise, cfg["sampling_steps"])
    _sync(device)
    return time.perf_counter() - start


def forward_flops(name, cfg, batch=1):
    """Forward FLOPs per ``batch`` samples, counted on the meta device (no memory, no compute)."""
    device = torch.device("meta")
    with device:
        model = BUILDERS[name](cfg, device, torch.float32)
        model = LatteFn(model) if name == "latte" else model
    c, t, h, w = cfg["latent"]
    x = torch.empty(batch, c, t, h, w, device=device)
    ctx = torch.empty(batch, cfg["text_len"], cfg["context_dim"], device=device)
    mask = torch.ones(batch, cfg["text_len"], dtype=torch.bool, device=device)
    tt = torch.ones(batch, device=device)
    params = sum(p.numel() for p in model.parameters())
    return count_flops(model, x, tt, ctx, mask), params


def run(args) -> dict:
    cfg = dict(PRESETS[args.preset])
    for key in ("batch", "depth", "train_iters", "sampling_steps", "warmup"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.checkpointing:
        cfg["checkpointing"] = True
    cfg["adaln"] = args.adaln
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if args.dtype != "fp32" and device.type == "cpu":
        print(f"note: {args.dtype} on CPU runs, but CPU timings in {args.dtype} say little about GPUs")
    set_backend(args.attention)
    if args.attention == "flash":
        print("note: Latte uses diffusers' attention processor (SDPA); flash applies to lvdm only")
    torch.manual_seed(0)
    peak_flops = device_peak_flops(device, dtype) if device.type == "cuda" else None
    c, t, h, w = cfg["latent"]
    tokens = t * (h // cfg["patch"]) * (w // cfg["patch"])
    rows = {}
    for name in args.models:
        fwd, params = forward_flops(name, cfg)
        if name == "lvdm":  # the analytic count and the counter agree exactly (tests/perf/test_flops.py)
            analytic = dit_forward_flops(build_lvdm(cfg, torch.device("meta"), torch.float32), (t, h, w), cfg["text_len"]).total
            assert analytic == fwd, (analytic, fwd)
        # --mixed: fp32 weights and optimizer, matmuls under autocast (Lightning's bf16-mixed);
        # otherwise the whole model and optimizer run in --dtype (bf16-true)
        weights = torch.float32 if args.mixed else dtype
        model = BUILDERS[name](cfg, device, weights)
        if cfg["checkpointing"]:
            _apply_checkpointing(name, model)
        if args.compile:
            block = type(model.transformer_blocks[0]) if name == "latte" else model.block_class
            compile_blocks(model, block_class=block)
        fn = LatteFn(model) if name == "latte" else model
        autocast = torch.autocast(device.type, dtype=dtype, enabled=args.mixed and dtype != torch.float32)
        inputs = make_inputs(cfg, cfg["batch"], device, weights)
        with autocast:
            train_s, peak_mem = bench_training(fn, list(model.parameters()), inputs, cfg, device)
            model.eval()
            sample_s = bench_sampling(fn, cfg, device, weights)
        train_flops = 3 * fwd * cfg["batch"]
        row = {
            "params_m": params / 1e6,
            "fwd_gflops_per_sample": fwd / 1e9,
            "train_ms_per_step": 1000 * train_s,
            "samples_per_s": cfg["batch"] / train_s,
            "tokens_per_s": cfg["batch"] * tokens / train_s,
            "train_tflops_per_s": train_flops / train_s / 1e12,
            "mfu": train_flops / train_s / peak_flops if peak_flops else None,
            "peak_mem_gb": peak_mem,
            "sampling_s": sample_s,
        }
        rows[name] = row
        del model, fn, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = {
        "preset": args.preset, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": args.dtype + ("-mixed" if args.mixed else ""), "attention": args.attention, "compile": args.compile,
        "torch": torch.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(sys.argv), "tokens_per_sample": tokens, "rows": rows,
    }
    if "lvdm" in rows and "latte" in rows:
        a, b = rows["lvdm"], rows["latte"]
        result["ratios"] = {
            "training_speedup": b["train_ms_per_step"] / a["train_ms_per_step"],
            "training_flops_per_s": a["train_tflops_per_s"] / b["train_tflops_per_s"],
            "sampling_speedup": (b["sampling_s"] / a["sampling_s"]) if a["sampling_s"] and b["sampling_s"] else None,
        }
    if "lvdm-latte" in rows and "latte" in rows:  # same architecture and FLOPs: the code's speed alone
        a, b = rows["lvdm-latte"], rows["latte"]
        result["latte_layout_ratios"] = {
            "training_speedup": b["train_ms_per_step"] / a["train_ms_per_step"],
            "sampling_speedup": (b["sampling_s"] / a["sampling_s"]) if a["sampling_s"] and b["sampling_s"] else None,
            "flops_ratio": a["fwd_gflops_per_sample"] / b["fwd_gflops_per_sample"],
        }
    return result


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table(result) -> str:
    cfg = result["config"]
    lines = [
        f"# bench_dit preset={result['preset']} device={result['device']} dtype={result['dtype']} "
        f"attention={result['attention']} compile={result['compile']} torch={result['torch']} {result['date']}",
        f"# latent {cfg['latent']} → {result['tokens_per_sample']} tokens, text {cfg['text_len']}, hidden {cfg['hidden']}, "
        f"depth {cfg['depth']}, heads {cfg['heads']}, batch {cfg['batch']}, sampling {cfg['sampling_steps']} steps CFG "
        f"(batch {cfg['sample_batch']}×2), checkpointing {cfg['checkpointing']}, lvdm adaLN {cfg['adaln']}",
        "| model | params (M) | fwd GFLOPs/sample | train ms/step | samples/s | tokens/s | TFLOP/s | MFU | peak mem (GB) | sampling s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        label = LABELS[name]
        lines.append(
            f"| {label} | {r['params_m']:.1f} | {r['fwd_gflops_per_sample']:.2f} | {r['train_ms_per_step']:.1f} | "
            f"{r['samples_per_s']:.3f} | {r['tokens_per_s']:.0f} | {r['train_tflops_per_s']:.4f} | "
            f"{_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} | {_fmt(r['peak_mem_gb'], '.1f')} | "
            f"{_fmt(r['sampling_s'], '.3f')} |"
        )
    if "ratios" in result:
        q = result["ratios"]
        lines.append(
            f"| **lvdm / Latte** | | | **{q['training_speedup']:.2f}× faster step** | | | "
            f"**{q['training_flops_per_s']:.2f}× FLOP/s** | | | **{_fmt(q['sampling_speedup'], '.2f')}× faster sampling** |"
        )
    if "latte_layout_ratios" in result:
        q = result["latte_layout_ratios"]
        lines.append(
            f"| **lvdm Latte layout / Latte** (same architecture; {q['flops_ratio']:.3f}× the FLOPs: caption K/V once per clip) | | | "
            f"**{q['training_speedup']:.2f}× faster step** | | | | | | **{_fmt(q['sampling_speedup'], '.2f')}× faster sampling** |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--mixed", action="store_true",
                        help="fp32 weights with autocast to --dtype (bf16-mixed) instead of pure --dtype")
    parser.add_argument("--attention", choices=["sdpa", "flash", "math"], default="sdpa")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block (both models)")
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS), default=["lvdm", "latte", "lvdm-latte"],
                        help="lvdm-latte: lvdm's STDiT in Latte's exact layout (same architecture and FLOPs as latte)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, help="training batch (overrides the preset)")
    parser.add_argument("--depth", type=int, help="layers (overrides the preset)")
    parser.add_argument("--train_iters", type=int, help="timed training steps")
    parser.add_argument("--sampling_steps", type=int, help="sampling steps (0: skip sampling)")
    parser.add_argument("--warmup", type=int, help="untimed training steps first")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of every block")
    parser.add_argument("--adaln", choices=["single", "per_block"], default="single",
                        help="lvdm's modulation: adaLN-single (STDiT/PixArt/Latte, default) or one adaLN linear per block")
    parser.add_argument("--json", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
