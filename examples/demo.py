"""The lvdm demo: Open-Sora's curriculum in miniature, trained from scratch on CPU.

Runs the same commands a user would type, printing each one:

1. ``lvdm data synth``  — write the synthetic moving-shapes dataset as WebDataset shards
   (train: 40 colour×shape×direction combinations; held out: 8 combinations never seen);
2. ``lvdm data encode`` — decode the mp4s once into latent shards (the pixel compressor's
   latents are the pixels), so training does no video decoding;
3. ``lvdm fit`` phase 1 — the image phase (``recipes/demo/image.yaml``): single frames, where
   colour and shape are learned;
4. ``lvdm fit`` phase 2 — the video phase (``recipes/demo/video.yaml``), initialised from
   phase 1 (``InitFrom`` with ``inflate_time``), where motion is learned, together with image-to-video;
5. ``lvdm sample`` + ``lvdm eval probe`` — the 64 held-out prompts, scored for colour, shape
   and direction;
6. ``lvdm sample --image`` + ``lvdm eval probe --skip_frames 1`` — image-to-video from the
   first frames of the held-out clips: do the generated frames move the way the caption says?

Both phases train a fixed number of steps: a busy or slow machine takes longer (the demo
prints its step rate and the machine's load) but trains the same model. Each ``lvdm`` command
picks its CPU threads when it starts (:func:`lvdm.utils.thread_plan`: the free cores, OpenMP
threads that sleep rather than spin while they wait), so other work on the machine slows it
far less (``benchmarks/thread_policy.py``); set ``OMP_NUM_THREADS`` to choose yourself.

``--compare`` also trains the video-only recipe (``recipes/demo/shapes.yaml``) for the same total
number of steps (image + video) and scores both runs every ``--curve_every`` steps: accuracy
against training minutes, both curves, written to ``<out>/compare.json``. That doubles the
demo's time, so ``make demo`` prints the comparison recorded by such a run
(``examples/demo_compare.json``, its command, machine and date inside) next to its own numbers.

Usage: ``python examples/demo.py [--out demo_out] [--image_steps N] [--video_steps N] [--compare [--curve_every N]]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (("colour", 0.95), ("direction", 0.75), ("shape", 0.60))
RECORDED = ROOT / "examples" / "demo_compare.json"  # the last `--compare` run's result, committed


def run(cmd: list[str]) -> float:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.time() - start
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds


def last_checkpoint(run_dir: Path) -> Path:
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        sys.exit(f"no {checkpoint}: did training save a checkpoint?")
    return checkpoint


def fit(lvdm, recipe, latents: Path, run_dir: Path, steps: int | None, extra=(),
        curve_every: int | None = None) -> tuple[Path, float, float]:
    """Trains ``recipe``; returns its last checkpoint, the seconds the command took and its start
    time. ``curve_every`` also keeps a checkpoint every that many steps in ``<run_dir>/curve``."""
    if curve_every:
        shutil.rmtree(run_dir / "curve", ignore_errors=True)  # a rerun's minutes must not mix with old files
        extra = [*extra, "--trainer.callbacks+=lvdm.training.callbacks.run_checkpoint.RunCheckpoint",
                 "--trainer.callbacks.dirpath", str(run_dir / "curve"),
                 "--trainer.callbacks.every_n_train_steps", str(curve_every),
                 "--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks.save_last", "false",
                 "--trainer.callbacks.filename", "step{step:05d}",
                 "--trainer.callbacks.auto_insert_metric_name", "false"]
    cmd = lvdm + [
        "fit", "--config", recipe,
        "--data.init_args.train_shards", str(latents / "train-*.tar"),
        "--data.init_args.val_shards", str(latents / "val-*.tar"),
        "--trainer.default_root_dir", str(run_dir), *extra,
    ]
    if steps is not None:
        cmd += ["--trainer.max_steps", str(steps)]  # the recipe's schedule follows it
    start = time.time()
    seconds = run(cmd)
    return last_checkpoint(run_dir), seconds, start


def probe(lvdm, checkpoint: Path, prompts: Path, samples: Path, result: Path, extra=(), probe_extra=()) -> dict:
    run(lvdm + ["sample", "--checkpoint", str(checkpoint), "--prompt_file", str(prompts), "--out", str(samples),
                "--batch_size", "64", "--overwrite", "true", *extra])
    run(lvdm + ["eval", "probe", "--videos", str(samples), "--output", str(result), *probe_extra])
    return json.loads(result.read_text())["accuracy"]


def curve(lvdm, run_dir: Path, start: float, steps: int, offset: tuple[int, float], prompts: Path, out: Path) -> list:
    """Probe accuracy of every checkpoint in ``<run_dir>/curve`` and of the final one (``steps``
    steps), against total steps and minutes: when the checkpoint was written since the fit started,
    plus ``offset`` (the steps and minutes of an earlier phase)."""
    checkpoints = [(int(c.stem[len("step"):]), c) for c in sorted((run_dir / "curve").glob("step*.ckpt"))]
    checkpoints = [(step, c) for step, c in checkpoints if step < steps] + [(steps, last_checkpoint(run_dir))]
    points = []
    for step, checkpoint in checkpoints:
        name = f"{run_dir.name}_{step:05d}"
        accuracy = probe(lvdm, checkpoint, prompts, out / "curve_samples" / name, out / "curve_samples" / f"{name}.json")
        points.append({"steps": offset[0] + step, "minutes": round(offset[1] + (checkpoint.stat().st_mtime - start) / 60, 2),
                       **{key: accuracy[key] for key, _ in TARGETS}})
    return points


def print_comparison(result: dict) -> None:
    """The curriculum and video-only curves as one table, in order of minutes."""
    print(f"  {'run':11s} {'steps':>5s} {'minutes':>7s} {'colour':>6s} {'direction':>9s} {'shape':>5s}")
    for name in ("curriculum", "video_only"):
        for p in result[name]:
            print(f"  {name.replace('_', '-'):11s} {p['steps']:5d} {p['minutes']:7.1f} {p['colour']:6.3f} "
                  f"{p['direction']:9.3f} {p['shape']:5.3f}")


def recipe_steps(recipe: str) -> int:
    import yaml

    return int(yaml.safe_load((ROOT / recipe).read_text())["trainer"]["max_steps"])


def write_first_frames(shards: Path, out: Path) -> Path:
    """The first frame of every held-out clip as ``<out>/<index>.png`` (the order of
    ``val_prompts.txt``)."""
    import tarfile

    from PIL import Image

    from lvdm.data.video import read_frames

    out.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in sorted(shards.glob("val-*.tar")):
        with tarfile.open(shard) as tar:
            for member in sorted((m for m in tar.getmembers() if m.name.endswith(".mp4")), key=lambda m: m.name):
                frames, _ = read_frames(tar.extractfile(member).read())
                Image.fromarray(frames[0]).save(out / f"{index:05d}.png", format="PNG")
                index += 1
    return out


def load_line() -> str:
    """The machine's load, and the CPU threads an `lvdm` command started now would pick
    (:func:`lvdm.utils.thread_plan`: each command decides for itself when it starts)."""
    from lvdm.utils import busy_cores, thread_plan

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    plan = thread_plan(cores, 0, os.environ, min(busy_cores(), cores))
    return f"load average {load:.1f} on {os.cpu_count()} CPU cores; lvdm CPU threads now: {plan.threads or 'default'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="folder for data, checkpoints, videos and results")
    parser.add_argument("--image_steps", type=int, default=None, help="override the image phase's max_steps")
    parser.add_argument("--video_steps", type=int, default=None, help="override the video phase's max_steps")
    parser.add_argument("--num_train", type=int, default=4000, help="training clips to synthesise")
    parser.add_argument("--compare", action="store_true",
                        help="also train the video-only recipe for the same total steps; score both runs every "
                             "--curve_every steps (accuracy against minutes, <out>/compare.json)")
    parser.add_argument("--curve_every", type=int, default=600, help="steps between the points of --compare's curves")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    script = Path(sys.executable).parent / "lvdm"  # the console script of this environment
    lvdm = [str(script)] if script.exists() else [sys.executable, "-m", "lvdm.cli"]
    out = Path(args.out)
    data, latents = out / "shapes", out / "shapes_latents"
    prompts = data / "val_prompts.txt"
    t0 = time.time()
    if not prompts.exists():
        run(lvdm + ["data", "synth", "--out", str(data), "--num_train", str(args.num_train), "--num_val", "64"])
    if not (latents / "val_prompts.txt").exists():
        run(lvdm + ["data", "encode", "--shards", str(data), "--out", str(latents)])

    image_steps = args.image_steps or recipe_steps("recipes/demo/image.yaml")
    video_steps = args.video_steps or recipe_steps("recipes/demo/video.yaml")
    every = args.curve_every if args.compare else None
    print(f"\n--- phase 1: images ({load_line()})", flush=True)
    image_ckpt, image_s, image_start = fit(lvdm, "recipes/demo/image.yaml", latents, out / "run_image", image_steps)
    print(f"\n--- phase 2: video from the image phase ({load_line()})", flush=True)
    video_ckpt, video_s, video_start = fit(
        lvdm, "recipes/demo/video.yaml", latents, out / "run_video", video_steps,
        ["--trainer.callbacks+=lvdm.training.callbacks.warm_start.InitFrom", "--trainer.callbacks.source", str(image_ckpt),
         "--trainer.callbacks.module=", "--trainer.callbacks.prefix=", "--trainer.callbacks.strict", "true",
         "--trainer.callbacks.inflate_time", "true"], every,
    )
    curriculum = probe(lvdm, video_ckpt, prompts, out / "samples", out / "probe.json")
    first_frames = write_first_frames(data, out / "first_frames")
    # scored on the generated frames only: the given first frame would anchor the motion fit
    i2v = probe(lvdm, video_ckpt, prompts, out / "samples_i2v", out / "probe_i2v.json", ["--image", str(first_frames)],
                ["--skip_frames", "1"])
    total = time.time() - t0

    comparison = None
    if args.compare:
        print(f"\n--- video-only baseline, {image_steps + video_steps} steps ({load_line()})", flush=True)
        _, _, base_start = fit(lvdm, "recipes/demo/shapes.yaml", latents, out / "run_video_only",
                               image_steps + video_steps, curve_every=every)
        image_minutes = (image_ckpt.stat().st_mtime - image_start) / 60
        comparison = {
            "command": shlex.join(["python", "examples/demo.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {load_line()} at the end",
            "curriculum": curve(lvdm, out / "run_video", video_start, video_steps, (image_steps, image_minutes),
                                prompts, out),
            "video_only": curve(lvdm, out / "run_video_only", base_start, image_steps + video_steps, (0, 0.0),
                                prompts, out),
        }
        (out / "compare.json").write_text(json.dumps(comparison, indent=1) + "\n")

    print("\n=== lvdm demo: held-out prompts (combinations never seen in training) ===")
    print(f"videos: {out / 'samples'}/  (64 clips)")
    for key, target in TARGETS:
        ok = "ok" if curriculum[key] >= target else "MISSED"
        print(f"  {key:9s} accuracy {curriculum[key]:.3f}   (target ≥ {target:.2f}) {ok}")
    print(f"image-to-video from the held-out first frames (generated frames 1-7): direction {i2v['direction']:.3f}, "
          f"colour {i2v['colour']:.3f}, shape {i2v['shape']:.3f}   ({out / 'samples_i2v'}/)")
    if comparison is not None:
        print(f"curriculum (image phase, then video) vs video-only at equal steps, measured now "
              f"({out / 'compare.json'}):")
        print_comparison(comparison)
    elif RECORDED.exists():
        recorded = json.loads(RECORDED.read_text())
        print(f"curriculum vs video-only at equal steps, as recorded by `{recorded['command']}` on {recorded['date']} "
              f"({recorded['machine']}; {RECORDED.relative_to(ROOT)}; run it to measure on this machine):")
        print_comparison(recorded)
    print(f"training: image phase {image_s:.0f} s, video phase {video_s:.0f} s; demo total {total:.0f} s "
          f"({load_line()} now). The steps are fixed: a busy machine takes longer, not a smaller model.")


if __name__ == "__main__":
    main()
