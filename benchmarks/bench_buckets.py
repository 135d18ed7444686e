"""Bucketed training vs one cropped size, and cached vs on-the-fly text embeddings.

1. **Buckets vs crop.** The same mixed corpus (``lvdm data synth-mixed``: landscape, portrait
   and square clips of 4 and 8 frames plus png images) is trained on twice by the same DiT:
   once through ``recipes/tiny/buckets.yaml``'s buckets (each clip at its own shape and
   bucket batch size), once cropped to one size (32x32, 4 frames, as without buckets; images
   are then too short and skipped). Reported: training tokens per second (DiT tokens of the
   batches trained on, data loading included), steps per second, and the share of the
   samples' source pixels x frames that reached the model.
2. **Cached vs on-the-fly text.** Latent shards are written with and without cached caption
   embeddings of a small T5 built here (random weights, no download), and the same DiT takes
   training steps from each: the step time shows what running T5 every step costs.

    python benchmarks/bench_buckets.py                     # CPU sizes, about a minute
    python benchmarks/bench_buckets.py --preset gpu --device cuda

Timings include data loading in the training process (``num_workers=0``) and exclude the
first ``--warmup`` steps; nothing is asserted on them (tests/test_benchmarks.py runs a smoke size).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

from lvdm.compressors.pixels import PixelCompressor
from lvdm.data.buckets import BucketConfig
from lvdm.data.datamodule import LatentDataModule, VideoDataModule
from lvdm.curation.encode import encode_shards
from lvdm.shapes.mixed import write_mixed_shapes
from lvdm.shapes.synthetic import ALL_COMBOS, caption
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text import T5TextEncoder
from lvdm.text.tiny import build_tiny_t5
from lvdm.text.words import WordTextEncoder

PRESETS = {
    # samples in the corpus, DiT hidden/depth, T5 d_model/layers, steps timed
    "smoke": dict(samples=24, hidden=32, depth=1, t5_dim=32, t5_layers=1, steps=3),
    "cpu": dict(samples=200, hidden=96, depth=3, t5_dim=256, t5_layers=4, steps=30),
    "gpu": dict(samples=400, hidden=384, depth=12, t5_dim=1024, t5_layers=24, steps=100),
}
BUCKETS = BucketConfig({"32": {1: (1.0, 16), 4: (1.0, 8), 8: (0.5, 8)}, "16": {8: (1.0, 16)}},
                       aspect_ratios=[0.6667, 1.0, 1.5], multiple_of=8)


def _dit(preset: dict, context_dim: int) -> DiT:
    torch.manual_seed(0)
    return DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=preset["hidden"], depth=preset["depth"],
               num_heads=4, conditioning="cross_attn", layout="spatial_temporal", context_dim=context_dim)


def _train(model: LatentDiffusionModule, loader, steps: int, warmup: int, device: str) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; tokens are the DiT's patch tokens."""
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pt, ph, pw = model.denoiser.patch_size
    it = iter(loader)
    tokens = samples = 0
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = next(it)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        loss = model.diffusion_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            b, _, t, h, w = batch["latent" if "latent" in batch else "video"].shape
            tokens += b * -(-t // pt) * (h // ph) * (w // pw)
            samples += b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"steps_per_s": steps / seconds, "tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds,
            "ms_per_step": 1000 * seconds / steps}


def _kept_fraction(dm: VideoDataModule, shards: Path, total_pixels: int) -> float:
    """Share of the corpus' source pixels x frames that one pass of ``dm``'s eval reader keeps."""
    dm.val_shards = str(shards)
    dm.setup("validate")
    kept = sum(int(b["video"][0].numel() // 3) * len(b["key"]) for b in dm.val_dataloader())
    return kept / total_pixels


def buckets_vs_crop(root: Path, preset: dict, device: str, warmup: int) -> dict:
    data = root / "mixed"
    summary = write_mixed_shapes(str(data), num_train=preset["samples"], num_val=2, shard_size=100)
    total = sum(n * math.prod(map(int, shape.split("x"))) for shape, n in summary["shapes"].items())
    rows = {}
    for name, kwargs in (("buckets", dict(buckets=BUCKETS, batch_size=8)),
                         ("crop 4x32x32", dict(num_frames=4, resolution=32, batch_size=8))):
        dm = VideoDataModule(str(data / "train-*.tar"), samples_per_epoch=10**6, shuffle_buffer=32, **kwargs)
        dm.setup("fit")
        model = LatentDiffusionModule(_dit(preset, 32), WordTextEncoder(dim=32, max_length=8), RectifiedFlow())
        rows[name] = _train(model, dm.train_dataloader(), preset["steps"], warmup, device)
        check = VideoDataModule(str(data / "train-*.tar"), **kwargs)
        rows[name]["content_kept"] = _kept_fraction(check, data / "train-*.tar", total)
    return rows


def cached_vs_on_the_fly_text(root: Path, preset: dict, device: str, warmup: int) -> dict:
    t5 = build_tiny_t5(root / "t5", [caption(*c) for c in ALL_COMBOS], d_model=preset["t5_dim"],
                       num_layers=preset["t5_layers"], num_heads=4, d_ff=4 * preset["t5_dim"])
    videos = root / "shapes"
    write_mixed_shapes(str(videos), num_train=preset["samples"], num_val=2, shard_size=100)
    encoder = T5TextEncoder(str(t5), max_length=32)
    encode_shards(str(videos / "train-*.tar"), str(root / "latents"), compressor=PixelCompressor(), num_frames=4,
                  resolution=32, batch_size=16, dtype="float32", text_encoder=encoder, device=device)
    rows = {}
    for name, drop_text in (("cached T5 embeddings", False), ("T5 every step", True)):
        dm = LatentDataModule(str(root / "latents" / "train-*.tar"), batch_size=8, samples_per_epoch=10**6,
                              shuffle_buffer=32)
        dm.setup("fit")
        loader = dm.train_dataloader()
        if drop_text:
            loader = ({k: v for k, v in b.items() if not k.startswith("text")} for b in loader)
        model = LatentDiffusionModule(_dit(preset, encoder.dim), T5TextEncoder(str(t5), max_length=32), RectifiedFlow())
        rows[name] = _train(model, loader, preset["steps"], warmup, device)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    # cropping skips every image as too short: one log line each
    logging.getLogger("lvdm.data").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="skipping sample")
    with tempfile.TemporaryDirectory() as tmp:
        result = {"preset": args.preset, "device": args.device, "threads": torch.get_num_threads(),
                  "buckets_vs_crop": buckets_vs_crop(Path(tmp), preset, args.device, args.warmup),
                  "text": cached_vs_on_the_fly_text(Path(tmp), preset, args.device, args.warmup)}
    print(f"preset {args.preset} on {args.device} ({result['threads']} threads), {preset['steps']} timed steps each\n")
    print("| data | tokens/s | samples/s | steps/s | source content kept |\n|---|---|---|---|---|")
    for name, r in result["buckets_vs_crop"].items():
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {r['samples_per_s']:.1f} | {r['steps_per_s']:.2f} | "
              f"{100 * r['content_kept']:.0f}% |")
    print("\n| text | ms/step | steps/s |\n|---|---|---|")
    for name, r in result["text"].items():
        print(f"| {name} | {r['ms_per_step']:.1f} | {r['steps_per_s']:.2f} |")
    text = result["text"]
    print(f"\ncached text embeddings: {text['T5 every step']['ms_per_step'] / text['cached T5 embeddings']['ms_per_step']:.2f}x "
          f"faster steps; buckets: {result['buckets_vs_crop']['buckets']['tokens_per_s'] / result['buckets_vs_crop']['crop 4x32x32']['tokens_per_s']:.2f}x the tokens/s of cropping")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
