"""FVD of the tiny recipe at several checkpoints: it falls as the model learns.

Runs the commands a user would type, printing each one:

1. ``lvdm data synth`` — the shapes world with clips long enough for the I3D (which needs at
   least 9 frames; the default 10 frames of 32x32 keep CPU training cheap, ``--num_frames 16
   --size 48`` gives the usual 16-frame FVD at about 4x the training cost);
2. ``lvdm fit`` — ``recipes/tiny/cross_attn.yaml`` on those clips, saving a checkpoint every
   ``--every`` steps;
3. ``lvdm eval fvd`` per checkpoint — sample the validation prompts from the checkpoint and
   compare with the synthetic validation videos (same prompts, ``--num_val`` of each).

Usage: ``python examples/fvd_during_training.py [--out fvd_out] [--max_steps 300] [--every 100]``.
With few videos FVD is biased upwards; the numbers compare checkpoints of one run, they are
not comparable with published FVDs (which use 256+ videos of real datasets).
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
    parser.add_argument("--out", default="fvd_out", help="folder for data, checkpoints and results")
    parser.add_argument("--max_steps", type=int, default=300, help="training steps")
    parser.add_argument("--every", type=int, default=100, help="checkpoint (and FVD) interval in steps")
    parser.add_argument("--num_train", type=int, default=2000, help="training clips")
    parser.add_argument("--num_val", type=int, default=32, help="validation clips = videos per FVD set")
    parser.add_argument("--num_frames", type=int, default=10, help="frames per clip (>= 9)")
    parser.add_argument("--size", type=int, default=32, help="frame size in pixels")
    parser.add_argument("--sampling_steps", type=int, default=20, help="sampler steps")
    args = parser.parse_args()

    script = Path(sys.executable).parent / "lvdm"
    lvdm = [str(script)] if script.exists() else [sys.executable, "-m", "lvdm.cli"]
    out = Path(args.out).resolve()
    data, run_dir = out / "shapes", out / "run"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not (data / "val_prompts.txt").exists():
        run(lvdm + ["data", "synth", "--out", str(data), "--num_train", str(args.num_train),
                    "--num_val", str(args.num_val), "--num_frames", str(args.num_frames), "--size", str(args.size)])
    checkpoint_cfg = out / "checkpoint_every.yaml"
    checkpoint_cfg.write_text(
        "trainer:\n  callbacks+:\n    - class_path: lvdm.training.callbacks.run_checkpoint.RunCheckpoint\n"
        f"      init_args:\n        every_n_train_steps: {args.every}\n        save_top_k: -1\n"
        f"        dirpath: {run_dir / 'checkpoints'}\n        filename: '{{step}}'\n"
    )
    run(lvdm + [
        "fit", "--config", "recipes/tiny/cross_attn.yaml", "--config", str(checkpoint_cfg),
        "--data.init_args.train_shards", str(data / "train-*.tar"),
        "--data.init_args.val_shards", str(data / "val-*.tar"),
        "--data.init_args.num_frames", str(args.num_frames),
        "--data.init_args.resolution", str(args.size),
        "--model.init_args.sample_shape", f"[{args.num_frames}, {args.size}, {args.size}]",
        "--trainer.max_steps", str(args.max_steps),
        "--trainer.default_root_dir", str(run_dir),
    ])
    checkpoints = sorted((run_dir / "checkpoints").glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    if len(checkpoints) < 2:
        sys.exit(f"expected checkpoints every {args.every} steps under {run_dir / 'checkpoints'}; found {checkpoints}")
    rows = []
    for ckpt in checkpoints:
        step = int(ckpt.stem.split("=")[1])
        result_file = out / f"fvd_step{step:06d}.json"
        run(lvdm + [
            "eval", "fvd", "--real", str(data / "val-*.tar"), "--fake_checkpoint", str(ckpt),
            "--prompt_file", str(data / "val_prompts.txt"), "--num_videos", str(args.num_val),
            "--num_frames", str(args.num_frames), "--steps", str(args.sampling_steps),
            "--samples_dir", str(out / f"samples_step{step:06d}"), "--output", str(result_file),
        ])
        rows.append((step, json.loads(result_file.read_text())["fvd"]))
    print(f"\n=== FVD of the tiny recipe vs {args.num_val} synthetic validation videos "
          f"({args.num_frames} frames of {args.size}x{args.size}) ===")
    for step, value in rows:
        print(f"  step {step:6d}   FVD {value:9.1f}")
    verdict = "fell" if rows[-1][1] < rows[0][1] else "did NOT fall"
    print(f"FVD {verdict} from {rows[0][1]:.1f} (step {rows[0][0]}) to {rows[-1][1]:.1f} (step {rows[-1][0]}); "
          f"total time {time.time() - t0:.0f} s")
    (out / "fvd_by_step.json").write_text(json.dumps([{"step": s, "fvd": v} for s, v in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
