"""Encode/decode throughput of every lvdm compressor, and what caching latents saves a training step.

    python benchmarks/bench_compressors.py --size tiny                 # small random VAEs (CI smoke, loaded CPUs)
    python benchmarks/bench_compressors.py --size real --frames 16 --resolution 256   # released architectures

Compressors: raw pixels; a per-frame SD-VAE (``AutoencoderKL``, ``FrameVAECompressor``);
diffusers' CogVideoX, Wan, LTX-Video, HunyuanVideo and Mochi 3D VAEs (``VideoVAECompressor``);
lvdm's causal 3D VAE and video VQ-VAE (``AutoencoderCompressor``). All weights are random
(``--size real``: each class's default config, which is its released architecture; ``tiny``:
a few channels per layer, for smoke runs) — throughput does not depend on the values.

Clip length: causal VAEs need ``1 + f·k`` frames, so for ``--frames 16`` they get 17 (CogVideoX
17 too, its ``1 + 8j``; Mochi 19, its ``1 + 6k``); the others get 16. Throughput is reported
in frames per second of pixels, so the numbers compare.

The last table: one training step of the shapes-demo DiT on a trained-autoencoder-sized 3D
VAE's latents, with the latents read from a cache (``LatentDataModule``'s batches) against
encoding the video inside the step (``VideoDataModule``'s), measured in this one run; the
ratio is what ``lvdm data encode`` saves per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import diffusers
import torch

from lvdm.autoencoders import CausalVAE3D, VideoVQVAE
from lvdm.compressors.autoencoder import AutoencoderCompressor
from lvdm.compressors.pixels import PixelCompressor
from lvdm.compressors.vae2d import FrameVAECompressor
from lvdm.compressors.video_vae import VideoVAECompressor

TINY = {
    "AutoencoderKL": dict(block_out_channels=(8, 8, 16, 16), latent_channels=4, norm_num_groups=4,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    "AutoencoderKLCogVideoX": dict(block_out_channels=(8, 8, 16, 16), latent_channels=16, layers_per_block=1,
                                   norm_num_groups=4),
    "AutoencoderKLWan": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    "AutoencoderKLLTXVideo": dict(block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                  layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1)),
    "AutoencoderKLHunyuanVideo": dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                      mid_block_add_attention=False),
    "AutoencoderKLMochi": dict(encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
                               layers_per_block=(1, 1, 1, 1, 1), add_attention_block=(False,) * 5),
}
# SD-VAE (sd-vae-ft-ema) architecture; the other classes' defaults are their released VAEs.
REAL = {"AutoencoderKL": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)}


def build(size: str) -> dict:
    torch.manual_seed(0)
    out = {"pixels": PixelCompressor()}
    configs = TINY if size == "tiny" else REAL
    out["SD-VAE per frame"] = FrameVAECompressor.from_vae(diffusers.AutoencoderKL(**configs["AutoencoderKL"]).eval())
    for name in ("AutoencoderKLCogVideoX", "AutoencoderKLWan", "AutoencoderKLLTXVideo", "AutoencoderKLHunyuanVideo",
                 "AutoencoderKLMochi"):
        out[name.removeprefix("AutoencoderKL")] = VideoVAECompressor.from_vae(getattr(diffusers, name)(**configs.get(name, {})).eval())
    base = 16 if size == "tiny" else 128
    vae = CausalVAE3D(latent_channels=16, base_channels=base, channel_mult=(1, 2, 4, 4), num_res_blocks=1 if size == "tiny" else 2)
    vq = VideoVQVAE(latent_channels=8, base_channels=base, channel_mult=(1, 2, 4), num_res_blocks=1 if size == "tiny" else 2)
    out["lvdm causal 3D VAE"] = AutoencoderCompressor.from_autoencoder(vae.eval())
    out["lvdm VQ-VAE"] = AutoencoderCompressor.from_autoencoder(vq.eval())
    return out


def frames_for(comp, frames: int) -> int:
    """The nearest valid clip length >= ``frames`` for ``comp``."""
    n = frames
    while True:
        try:
            comp.latent_shape(n, comp.spatial_downsample, comp.spatial_downsample)
            return n
        except ValueError:
            n += 1


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def throughput(comps: dict, frames: int, resolution: int, repeats: int) -> list[dict]:
    rows = []
    for name, comp in comps.items():
        n = frames_for(comp, frames)
        video = torch.rand(1, 3, n, resolution, resolution) * 2 - 1
        with torch.no_grad():
            latent = comp.encode(video)
            enc = timed(lambda: comp.encode(video), repeats)
            dec = timed(lambda: comp.decode(latent), repeats)
        rows.append({"compressor": name, "frames": n, "latent": list(latent.shape[1:]),
                     "compression": round(video[0].numel() / latent[0].numel(), 1),
                     "params_m": round(sum(p.numel() for p in comp.parameters()) / 1e6, 2),
                     "encode_fps": round(n / enc, 2), "decode_fps": round(n / dec, 2)})
        print(f"| {name} | {n} | {rows[-1]['latent']} | {rows[-1]['compression']}x | {rows[-1]['params_m']} | "
              f"{rows[-1]['encode_fps']} | {rows[-1]['decode_fps']} |", flush=True)
    return rows


def cached_vs_in_loop(repeats: int) -> dict:
    """One DiT training step on a shapes-sized 3D VAE's latents: cached latents vs encoding in the step."""
    from lvdm.diffusion.objectives import RectifiedFlow
    from lvdm.models.dit import DiT
    from lvdm.training.module import LatentDiffusionModule
    from lvdm.text.words import WordTextEncoder

    torch.manual_seed(0)
    vae = CausalVAE3D(latent_channels=8, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, patch_size=4,
                      time_downsample=4, spatial_downsample=4)  # the recipes/autoencoder/shapes_vae.yaml model
    comp = AutoencoderCompressor.from_autoencoder(vae.eval())
    dit = DiT(in_channels=8, patch_size=(1, 2, 2), hidden_size=192, depth=6, num_heads=6, conditioning="adaln",
              context_dim=64, qk_norm=True)
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=64, max_length=8), RectifiedFlow(prediction="sample"), compressor=comp,
                                   sample_shape=(9, 32, 32))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    video = torch.rand(16, 3, 9, 32, 32) * 2 - 1
    captions = ["a red square moving left"] * 16
    with torch.no_grad():
        latent = comp.encode_raw(video)

    def step(batch):
        loss = module.diffusion_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    cached = timed(lambda: step({"latent": latent, "caption": captions}), repeats)
    in_loop = timed(lambda: step({"video": video, "caption": captions}), repeats)
    return {"batch": "16 x 9x32x32 clips -> 8x3x8x8 latents", "cached_ms": round(1000 * cached, 1),
            "encode_in_loop_ms": round(1000 * in_loop, 1), "ratio": round(in_loop / cached, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", nargs="*", default=None, help="compressor names to run (default: all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    comps = build(args.size)
    if args.only is not None:
        comps = {k: v for k, v in comps.items() if k in args.only}
    print(f"# compressors at {args.frames}x{args.resolution}x{args.resolution}, {args.size} random weights, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("| compressor | frames | latent (c, t, h, w) | compression | params (M) | encode frames/s | decode frames/s |")
    print("|---|---|---|---|---|---|---|")
    rows = throughput(comps, args.frames, args.resolution, args.repeats)
    loop = cached_vs_in_loop(args.repeats)
    print(f"\ncached latents: {loop['cached_ms']} ms/step; encoding in the step: {loop['encode_in_loop_ms']} ms/step "
          f"-> caching is {loop['ratio']}x faster ({loop['batch']})")
    result = {"size": args.size, "frames": args.frames, "resolution": args.resolution, "threads": torch.get_num_threads(),
              "rows": rows, "cached_vs_in_loop": loop}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
