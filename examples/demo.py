"""The lvdm demo: a tiny text-to-video model trained from scratch on CPU in minutes.

Runs the same commands a user would type, printing each one:

1. ``lvdm data synth``  — write the synthetic moving-shapes dataset as WebDataset shards
   (train: 40 colour×shape×direction combinations; held out: 8 combinations never seen);
2. ``lvdm data encode`` — decode the mp4s once into latent shards (the pixel compressor's
   latents are the pixels), so training does no video decoding;
3. ``lvdm fit``         — train the demo recipe (``recipes/demo/shapes.yaml``);
4. ``lvdm sample``      — render the 64 held-out prompts to mp4;
5. ``lvdm eval probe``  — measure colour / shape / direction accuracy of those videos.

Usage: ``python examples/demo.py [--out demo_out] [--max_steps N]``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="folder for data, checkpoints, videos and results")
    parser.add_argument("--recipe", default="recipes/demo/shapes.yaml", help="training recipe")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipe's trainer.max_steps")
    parser.add_argument("--num_train", type=int, default=4000, help="training clips to synthesise")
    args = parser.parse_args()

    script = Path(sys.executable).parent / "lvdm"  # the console script of this environment
    lvdm = [str(script)] if script.exists() else [sys.executable, "-m", "lvdm.cli"]
    out = Path(args.out)
    data, latents = out / "shapes", out / "shapes_latents"
    run_dir, samples = out / "run", out / "samples"
    t0 = time.time()
    if not (data / "val_prompts.txt").exists():
        run(lvdm + ["data", "synth", "--out", str(data), "--num_train", str(args.num_train), "--num_val", "64"])
    if not (latents / "val_prompts.txt").exists():
        run(lvdm + ["data", "encode", "--shards", str(data), "--out", str(latents)])
    fit = lvdm + [
        "fit", "--config", args.recipe,
        "--data.init_args.train_shards", str(latents / "train-*.tar"),
        "--data.init_args.val_shards", str(latents / "val-*.tar"),
        "--trainer.default_root_dir", str(run_dir),
    ]
    if args.max_steps is not None:
        fit += ["--trainer.max_steps", str(args.max_steps)]  # the recipe's schedule follows it
    run(fit)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        sys.exit(f"no {checkpoint}: did training save a checkpoint?")
    run(lvdm + [
        "sample", "--checkpoint", str(checkpoint),
        "--prompt_file", str(data / "val_prompts.txt"),
        "--out", str(samples), "--batch_size", "64",
    ])
    result_file = out / "probe.json"
    run(lvdm + ["eval", "probe", "--videos", str(samples), "--output", str(result_file)])
    result = json.loads(result_file.read_text())
    acc = result["accuracy"]
    print("\n=== lvdm demo: held-out prompts (combinations never seen in training) ===")
    print(f"videos: {samples}/  ({len(result['results'])} clips)")
    for key, target in (("colour", 0.95), ("direction", 0.75), ("shape", 0.60)):
        print(f"  {key:9s} accuracy {acc[key]:.3f}   (target ≥ {target:.2f})")
    print(f"total time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
