"""Faster sampling on a trained shapes model, in one run: full sampling, step caching (TeaCache's rule
and first-block caching, at the model's calibrated thresholds), a guidance interval and, optionally, a
few-step distilled student; for each, DiT evaluations and seconds per video, their ratios against full
sampling, and the shapes probe's colour / direction / shape accuracy on the same prompts and noise.

    python benchmarks/bench_sampling.py --checkpoint demo_out/run_video/checkpoints/last.ckpt \\
        --prompt_file demo_out/shapes/val_prompts.txt [--student student.ckpt --student_steps 4]

DiT evaluations per video: batch rows through the denoiser's block units (``block_class``) divided by
its depth and the video count, so a guided step costs 2, a step outside the guidance interval 1, and
a first-block-cached step that skips the rest ``2 / depth``. Seconds: the wall time of ``generate``
(sampling and decoding; not writing or probing), per video; the methods take turns batch by batch,
so a change of the machine's load falls on all of them. The step-cache thresholds come from
``--calibration`` (read, or written there when it does not exist), else from the checkpoint's
``.step_cache.json``, else from a calibration on ``--calibration_prompts`` training captions (their
own seeds), kept in ``--work``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lvdm.checkpoints.load import load_module  # noqa: E402
from lvdm.diffusion.cache_calibration import calibrate, read_calibration, recording, write_calibration  # noqa: E402
from lvdm.diffusion.guidance import GuidanceSchedule  # noqa: E402
from lvdm.generation.generator import save_videos  # noqa: E402
from lvdm.shapes.probe import probe_videos  # noqa: E402
from lvdm.shapes.synthetic import TRAIN_COMBOS, caption  # noqa: E402
from lvdm.utils import read_prompt_file  # noqa: E402

ATTRIBUTES = ("colour", "direction", "shape")


class BlockCounter:
    """Batch rows through a denoiser's block units (forward pre-hooks), and its depth."""

    def __init__(self, denoiser: torch.nn.Module):
        units = [m for m in denoiser.modules() if isinstance(m, denoiser.block_class)]
        self.depth, self.rows = len(units), 0
        self.hooks = [m.register_forward_pre_hook(self._count) for m in units]

    def _count(self, _module, args) -> None:
        self.rows += args[0].shape[0]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def model_calibration(module, args):
    """The calibration the cached rows use (see the module docstring)."""
    if args.calibration and Path(args.calibration).exists():
        return read_calibration(args.calibration)
    if module.step_cache_calibration is not None and not args.calibration:
        return module.step_cache_calibration
    prompts = [caption(*combo) for combo in TRAIN_COMBOS[:: max(1, len(TRAIN_COMBOS) // args.calibration_prompts)]]
    with torch.no_grad(), recording(module.denoiser) as recorder:
        module.generate(prompts[: args.calibration_prompts], num_steps=args.steps, seed=10_000)
    result = calibrate(recorder, args.target_speedup)
    path = write_calibration(result, args.calibration or Path(args.work) / "step_cache.json")
    print(f"calibrated on {args.calibration_prompts} training captions -> {path}")
    return read_calibration(path)


class Method:
    """One row: ``module.generate(..., num_steps=steps, **kwargs)``, its block rows, seconds and videos."""

    def __init__(self, name: str, module, steps, work: Path, **kwargs):
        self.name, self.module, self.steps, self.kwargs = name, module, steps, kwargs
        self.folder = work / name.split(" (")[0].replace(" ", "_")
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.mp4"):
            old.unlink()
        (self.folder / "prompts.txt").unlink(missing_ok=True)
        self.seconds, self.rows, self.paths = 0.0, 0, []

    def run(self, chunk: list[str], seed: int, start: int) -> None:
        counter = BlockCounter(self.module.denoiser)
        try:
            began = time.perf_counter()
            with torch.no_grad():
                videos = self.module.generate(chunk, num_steps=self.steps, seed=seed, **self.kwargs)
            self.seconds += time.perf_counter() - began
        finally:
            counter.remove()
        self.rows += counter.rows / counter.depth
        self.paths += save_videos(videos, chunk, self.folder, fps=self.module.fps, start_index=start)

    def result(self, prompts: list[str]) -> dict:
        probe = probe_videos(self.paths, prompts)
        return {"name": self.name, "evaluations": self.rows / len(prompts), "seconds": self.seconds / len(prompts),
                "counts": {a: probe["counts"][a] for a in ATTRIBUTES}}


def measure(methods: list[Method], prompts: list[str], args) -> list[dict]:
    """Every method on every batch of prompts, interleaved batch by batch (the machine's load falls
    on all alike); then each method's videos probed."""
    for start in range(0, len(prompts), args.batch_size):
        for method in methods:
            method.run(prompts[start:start + args.batch_size], args.seed + start, start)
    return [method.result(prompts) for method in methods]


def table(rows: list[dict]) -> str:
    """The markdown table; ratios and probe changes against the first row (full sampling)."""
    full = rows[0]
    lines = ["| sampling | DiT evaluations / video | fewer | s / video | faster | colour | direction | shape |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        probe = []
        for a in ATTRIBUTES:
            c, base = row["counts"][a], full["counts"][a]["correct"]
            probe.append(f"{c['correct']}/{c['total']} ({c['correct'] - base:+d})")
        lines.append(f"| {row['name']} | {row['evaluations']:.2f} | {full['evaluations'] / row['evaluations']:.2f}x | "
                     f"{row['seconds']:.3f} | {full['seconds'] / row['seconds']:.2f}x | {' | '.join(probe)} |")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--prompt_file", required=True, help="the held-out prompts (e.g. shapes/val_prompts.txt)")
    parser.add_argument("--work", default="bench_sampling_out", help="folder for the videos (and a calibration)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", default=None, help="a calibration file to read, or to write when absent")
    parser.add_argument("--calibration_prompts", type=int, default=8, help="training captions to calibrate on")
    parser.add_argument("--target_speedup", type=float, default=2.0, help="what a new calibration aims at")
    parser.add_argument("--guidance_interval", type=float, nargs=2, default=[0.3, 0.7], metavar=("LO", "HI"))
    parser.add_argument("--student", default=None, help="a few-step distilled student checkpoint")
    parser.add_argument("--student_steps", type=int, default=4)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    prompts = read_prompt_file(args.prompt_file)
    module = load_module(args.checkpoint).module.eval()
    module.step_cache_calibration = model_calibration(module, args)
    with torch.no_grad():
        module.generate(prompts[:1], num_steps=args.steps)  # warm-up
    work, t = Path(args.work), module.step_cache_calibration.thresholds
    methods = [Method("full", module, args.steps, work),
               Method(f"step cache (teacache, {t['teacache']:.3g})", module, args.steps, work,
                      step_cache="calibrated", step_cache_mode="teacache"),
               Method(f"first-block cache ({t['first_block']:.3g})", module, args.steps, work,
                      step_cache="calibrated", step_cache_mode="first_block"),
               Method("guidance interval [{:g}, {:g}]".format(*args.guidance_interval), module, args.steps, work,
                      guidance_schedule=GuidanceSchedule(tuple(args.guidance_interval)))]
    if args.student:
        student = load_module(args.student).module.eval()
        methods.append(Method(f"student ({args.student_steps} steps)", student, args.student_steps, work))
    rows = measure(methods, prompts, args)
    print(f"\n{len(prompts)} prompts, batches of {args.batch_size}, {args.steps or 'the model default'} steps")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
