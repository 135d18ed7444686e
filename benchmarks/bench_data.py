"""Data-preparation throughput: ingest, split and filter (clips/s per core), and the training
reader's decode throughput against a naive full decode.

    python benchmarks/bench_data.py                       # 24 clips of 64 frames at 256×256 (h264 mp4)
    python benchmarks/bench_data.py --clips 8 --frames 16 --size 64 --workers 2
    python benchmarks/bench_data.py --h100_samples_per_s 29   # cores to feed one GPU at that rate

The corpus is synthetic (a textured pan with a scene cut in the middle, encoded by PyAV), so
the numbers are reproducible anywhere; real footage at higher resolution costs more per clip.
"Per core" divides by the worker processes used (``--workers 0`` runs in this process = one
core). The reader rows time :func:`lvdm.data.video.decode_clip` exactly as
``VideoDataModule`` calls it (a random window of ``--num_frames`` frames, resized and cropped
to ``--resolution``) against decoding every frame first and then taking the window.

How many CPU cores feed one H100: ``--h100_samples_per_s`` (default 20: the training-speed
target of the ``h100`` preset of ``benchmarks/bench_dit.py`` — STDiT-XL/2, 16×256×256 clips,
bf16 — not a measurement) divided by the reader's clips/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lvdm.curation.filter import filter_dataset
from lvdm.curation.ingest import ingest
from lvdm.curation.split import split
from lvdm.data.sample_media import encode_video
from lvdm.data.video import decode_clip, read_frames


def _clip(frames: int, size: int, seed: int) -> np.ndarray:
    """A smooth random texture panning 2 px/frame, with a different texture after the midpoint."""
    rng = np.random.default_rng(seed)
    out = np.empty((frames, size, size, 3), np.uint8)
    for scene in range(2):
        coarse = rng.integers(0, 255, (size // 8 + 1, (size + 2 * frames) // 8 + 2, 3)).astype(np.uint8)
        canvas = np.kron(coarse, np.ones((8, 8, 1), np.uint8))
        for t in range(scene * frames // 2, (scene + 1) * frames // 2 if scene == 0 else frames):
            out[t] = canvas[:size, 2 * t : 2 * t + size]
    return out


def _corpus(root: Path, clips: int, frames: int, size: int) -> int:
    total = 0
    for i in range(clips):
        data = encode_video(_clip(frames, size, i), "mp4")
        (root / f"clip_{i:04d}.mp4").write_bytes(data)
        (root / f"clip_{i:04d}.txt").write_text(f"clip number {i}")
        total += len(data)
    return total


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _reader_rates(videos: list[bytes], num_frames: int, resolution: int, repeats: int) -> dict:
    """Clips/s of the reader and of a naive full decode, on one thread, timed alternately
    (video by video) so that load from other processes hits both alike."""
    import torch

    from lvdm.data.video import _resize_crop

    torch.set_num_threads(1)  # one core, like one DataLoader worker
    rng = np.random.default_rng(0)

    def reader(data):
        decode_clip(data, num_frames, resolution=resolution, random_start=True, rng=rng)

    def naive(data):  # the same output, from every frame decoded first
        frames, _ = read_frames(data)
        start = int(rng.integers(0, len(frames) - num_frames + 1))
        clip = torch.from_numpy(frames[start : start + num_frames]).permute(0, 3, 1, 2).float()
        (_resize_crop(clip, (resolution, resolution)) / 127.5 - 1.0).clamp_(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()

    spent = {reader: 0.0, naive: 0.0}
    for _ in range(repeats):
        for data in videos:
            for fn in (reader, naive):
                spent[fn] += _timed(lambda: fn(data))[1]
    count = repeats * len(videos)
    return {"reader_clips_per_s": count / spent[reader], "naive_clips_per_s": count / spent[naive]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=64, help="frames per source clip (8 fps)")
    parser.add_argument("--size", type=int, default=256, help="source clips are size × size")
    parser.add_argument("--workers", type=int, default=0, help="curation worker processes (0 = this process)")
    parser.add_argument("--num_frames", type=int, default=16, help="frames per training clip (reader rows)")
    parser.add_argument("--resolution", type=int, default=256, help="training clip size (reader rows)")
    parser.add_argument("--repeats", type=int, default=2, help="reader passes over the corpus")
    parser.add_argument("--h100_samples_per_s", type=float, default=20.0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    cores = max(1, args.workers)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()
        size_bytes = _corpus(root / "raw", args.clips, args.frames, args.size)
        quiet = dict(workers=args.workers)
        summary, ingest_s = _timed(lambda: ingest(str(root / "raw"), str(root / "ds"), shard_size=max(1, args.clips // cores), **quiet))
        split_summary, split_s = _timed(lambda: split(str(root / "ds"), str(root / "clips"), min_seconds=0.5, **quiet))
        _, filter_s = _timed(lambda: filter_dataset(str(root / "clips"), str(root / "kept"), "duration > 0", **quiet))
        videos = [p.read_bytes() for p in sorted((root / "raw").glob("*.mp4"))]
        reader = _reader_rates(videos, args.num_frames, min(args.resolution, args.size), args.repeats)

    stages = {
        "ingest": args.clips / ingest_s,
        "split": args.clips / split_s,
        "filter": split_summary["clips"] / filter_s,
    }
    per_core = {name: rate / cores for name, rate in stages.items()}
    cores_per_h100 = args.h100_samples_per_s / reader["reader_clips_per_s"]
    device = f"CPU ({platform.machine()}, {os.cpu_count()} cores visible)"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# bench_data {device} {when}: {args.clips} clips × {args.frames} frames × {args.size}² h264 mp4 "
          f"({size_bytes / 2**10:.0f} KiB), workers={args.workers}")
    print("| stage | clips/s | clips/s per core |\n|---|---:|---:|")
    for name in stages:
        unit = "source clips" if name != "filter" else "scene clips"
        print(f"| {name} ({unit}) | {stages[name]:.2f} | {per_core[name]:.2f} |")
    print(f"\n| training reader, {args.num_frames}×{min(args.resolution, args.size)}² random window, 1 core | clips/s |"
          f"\n|---|---:|")
    print(f"| decode_clip (stops after the window) | {reader['reader_clips_per_s']:.2f} |")
    print(f"| naive: decode every frame, then take the window | {reader['naive_clips_per_s']:.2f} |")
    print(f"| **speed-up** | **{reader['reader_clips_per_s'] / reader['naive_clips_per_s']:.2f}×** |")
    print(f"\ncores to feed one H100 at {args.h100_samples_per_s:g} samples/s (an assumed rate, not measured): "
          f"{cores_per_h100:.1f} decoding from mp4 at this size")
    result = {"device": device, "date": when, "args": vars(args), "ingest_accepted": summary["accepted"],
              "clips_per_s": stages, "clips_per_s_per_core": per_core, "reader": reader,
              "cores_per_h100": cores_per_h100}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
