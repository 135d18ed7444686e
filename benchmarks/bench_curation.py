"""Curation throughput by stage (clips/s on one core) and the CPU cores that would feed one H100.

    python benchmarks/bench_curation.py                      # 360p, 2 s clips at 24 fps
    python benchmarks/bench_curation.py --preset smoke       # CI smoke test (tiny clips)
    python benchmarks/bench_curation.py --clip <CLIP folder or hub id>   # + clip_match on a real CLIP

Every stage runs in this process on one thread (torch, OpenCV, ONNX Runtime and the decoder)
and is timed in CPU seconds of this process, so its rate is clips per second **per core** even
on a busy machine; a process pool or a Ray cluster scales it by the cores given
(the stages share nothing between clips but the duplicate search, which is a final pass). The
corpus is synthetic: panning textured clips encoded as H.264 mp4 at the preset's size.

"Cores per H100" divides the training throughput of the ``h100`` preset of
``benchmarks/bench_dit.py`` (STDiT-XL/2, 16×256×256 clips; ``--train_samples_per_s``, default
the 20 samples/s target of ``benchmarks/RESULTS.md``, or ``--dit_json`` for a measured run) by
the per-core rate of the training reader's decode (``lvdm.data.video.decode_clip``: 16
consecutive frames resized to 256×256, as ``VideoDataModule`` does for every sample), and the
one-off curation cost by the same training rate: how many cores curate a clip as fast as one
H100 consumes them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PRESETS = {
    "default": dict(clips=8, frames=48, height=360, width=640, fps=24),
    "smoke": dict(clips=2, frames=12, height=64, width=96, fps=12),
}
TRAIN_TARGET = 20.0  # samples/s of the h100 preset: the target in benchmarks/RESULTS.md


def _corpus(cfg) -> list[bytes]:
    import cv2

    from lvdm.data.video import encode_mp4

    clips = []
    for seed in range(cfg["clips"]):
        rng = np.random.default_rng(seed)
        step = 1 + seed % 4
        noise = rng.uniform(0, 255, (cfg["height"], cfg["width"] + step * cfg["frames"], 3)).astype(np.float32)
        canvas = np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 3 - 255, 0, 255).astype(np.uint8)
        frames = np.stack([canvas[:, step * t : step * t + cfg["width"]] for t in range(cfg["frames"])])
        clips.append(encode_mp4(frames, fps=cfg["fps"], crf=23))
    return clips


def _rate(fn, items, repeat: int = 1) -> float:
    """Items per CPU-second of ``fn`` over ``items`` (best of ``repeat`` passes, after a warm-up).

    CPU time of this process, not wall time: on a shared machine the wall clock also counts the
    time other jobs held the core, while CPU time is what one core spends per clip."""
    fn(items[0])
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return len(items) / best


def _scorer_stage(scorer, max_short_side: int = 512):
    from lvdm.curation.frames import load_clip_frames

    def run(data: bytes):
        clip = load_clip_frames(data, "mp4", "bench", scorer.frame_indices, max_short_side=max_short_side)
        return scorer.score_batch([clip])

    return run


def _score_folder_rate(clips: list[bytes], cfg, scorers: list[str]) -> float:
    """Clips/s of the whole ``lvdm data score`` stage (read shards, decode, score, rewrite) in process."""
    import io
    import tarfile

    from lvdm.curation.score import score_dataset
    from lvdm.data.schema import write_manifest

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        with tarfile.open(src / "shard-000000.tar", "w") as tar:
            for i, data in enumerate(clips):
                meta = {"kind": "video", "fps": cfg["fps"], "frames": cfg["frames"], "width": cfg["width"],
                        "height": cfg["height"], "duration": cfg["frames"] / cfg["fps"]}
                for ext, value in (("mp4", data), ("txt", b"a clip"), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"clip{i}.{ext}")
                    info.size = len(value)
                    tar.addfile(info, io.BytesIO(value))
        write_manifest([{"key": f"clip{i}", "shard": "shard-000000.tar", **meta} for i in range(len(clips))],
                       src / "manifest.parquet")
        start = time.process_time()
        score_dataset(str(src), str(Path(tmp) / "out"), scorers=scorers, workers=0, chunk_size=len(clips))
        return len(clips) / (time.process_time() - start)


def run(args) -> dict:
    import cv2
    import torch

    from lvdm.curation.scorers import ClipMatchScorer, DuplicateScorer, MotionScorer, OCRScorer, RulesScorer
    from lvdm.curation.frames import Clip, evenly_spaced, load_clip_frames
    from lvdm.data.video import decode_clip

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = dict(PRESETS[args.preset])
    clips = _corpus(cfg)
    train_rate, train_source = args.train_samples_per_s, "the issue's target, benchmarks/RESULTS.md"
    if args.dit_json:
        train_rate = json.loads(Path(args.dit_json).read_text())["rows"]["lvdm"]["samples_per_s"]
        train_source = f"measured, {args.dit_json}"
    elif args.train_samples_per_s != TRAIN_TARGET:
        train_source = "given on the command line"
    reader_frames = min(16, cfg["frames"])
    meta = {"width": cfg["width"], "height": cfg["height"], "fps": cfg["fps"], "duration": cfg["frames"] / cfg["fps"]}
    stages = {
        "training reader: decode_clip 16×256×256": lambda d: decode_clip(d, reader_frames, resolution=256),
        "key frames only (4 of the clip, bounded)": lambda d: load_clip_frames(d, "mp4", "b", lambda n: evenly_spaced(n, 4)),
        "score: rules (metadata, no decode)": lambda d: RulesScorer().score(Clip("b", "video", cfg["frames"], {}, meta)),
        "score: motion (4 Farneback pairs at 256)": _scorer_stage(MotionScorer()),
        "score: duplicates (pHash of 4 frames)": _scorer_stage(DuplicateScorer()),
        "score: ocr (RapidOCR on 3 frames at 512)": _scorer_stage(OCRScorer()),
    }
    if args.clip:
        stages["score: clip_match (3 frames)"] = _scorer_stage(ClipMatchScorer(args.clip))
    rows = {name: _rate(fn, clips, args.repeat) for name, fn in stages.items()}
    rows["lvdm data score motion+duplicates+rules (whole stage)"] = _score_folder_rate(
        clips, cfg, ["motion", "duplicates", "rules"])
    reader = rows["training reader: decode_clip 16×256×256"]
    curation = 1 / sum(1 / rows[name] for name in rows if name.startswith("score: "))
    return {
        "preset": args.preset, "config": cfg,
        "device": f"CPU ({platform.machine()}, 1 thread)", "load_average": os.getloadavg()[0],
        "torch": torch.__version__, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "clips_per_s_per_core": rows,
        "train_samples_per_s": train_rate, "train_source": train_source,
        "cores_per_h100_reader": train_rate / reader,
        "curation_clips_per_s_per_core": curation,
        "cores_per_h100_curation": train_rate / curation,
    }


def table(result) -> str:
    cfg = result["config"]
    lines = [
        f"# bench_curation preset={result['preset']} device={result['device']} torch={result['torch']} "
        f"{result['date']} load_average={result['load_average']:.1f}",
        f"# corpus: {cfg['clips']} clips of {cfg['frames']} frames at {cfg['height']}x{cfg['width']}, "
        f"{cfg['fps']} fps, H.264 mp4",
        "",
        "| stage | clips per CPU-second |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {rate:.2f} |" for name, rate in result["clips_per_s_per_core"].items()]
    lines += [
        "",
        f"Training at {result['train_samples_per_s']:.1f} samples/s ({result['train_source']}) on one H100 needs "
        f"**{result['cores_per_h100_reader']:.1f} cores** of training-reader decode; curating clips "
        f"(every scorer above, each decoding its own frames: {result['curation_clips_per_s_per_core']:.2f} "
        f"clips/s per core) as fast as one H100 trains on them takes {result['cores_per_h100_curation']:.1f} cores.",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes per stage (the best is kept)")
    parser.add_argument("--clip", help="a CLIP folder or hub id: also time clip_match")
    parser.add_argument("--train_samples_per_s", type=float, default=TRAIN_TARGET,
                        help="training samples/s of one H100 on the h100 preset")
    parser.add_argument("--dit_json", help="a bench_dit.py --json result of the h100 preset: use its measured rate")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
