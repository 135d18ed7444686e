"""How close few-step samples come to the teacher's own sampler, on the same noise.

For each prompt (one per line of ``--prompt_file``) the teacher samples at its defaults (its steps
and guidance scale: the reference); then the teacher at ``--steps`` steps with its guidance, the
teacher at ``--steps`` without guidance, and the student at its own defaults (its steps, guidance
1) sample from the same noise. Prints the root-mean-square pixel difference (videos in [-1, 1])
of each to the reference: 0 is the teacher's own video.

Usage: ``python benchmarks/distill_fidelity.py --teacher run_video/checkpoints/last.ckpt
--student runs/distill_demo/checkpoints/last.ckpt --prompt_file shapes/val_prompts.txt``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the teacher's checkpoint")
    parser.add_argument("--student", required=True, help="the distilled student's checkpoint")
    parser.add_argument("--prompt_file", required=True, help="prompts, one a line")
    parser.add_argument("--steps", type=int, default=4, help="the teacher's few-step baselines")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from lvdm.checkpoints.load import load_module

    prompts = [line for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
    teacher = load_module(args.teacher).module.eval()
    student = load_module(args.student).module.eval()
    with torch.no_grad():
        reference = teacher.generate(prompts, seed=args.seed)
        runs = {
            f"teacher, {args.steps} steps, guidance {teacher.guidance_scale:g}": (teacher, args.steps, None),
            f"teacher, {args.steps} steps, guidance 1": (teacher, args.steps, 1.0),
            f"student, {student.objective.num_sampling_steps} steps, guidance {student.guidance_scale:g}": (student, None, None),
        }
        result = {}
        for name, (module, steps, scale) in runs.items():
            video = module.generate(prompts, num_steps=steps, guidance_scale=scale, seed=args.seed)
            result[name] = float((video - reference).pow(2).mean().sqrt())
    print(f"RMSE to the teacher's own samples ({teacher.objective.num_sampling_steps} steps, guidance "
          f"{teacher.guidance_scale:g}), {len(prompts)} prompts:")
    for name, rmse in result.items():
        print(f"  {name:32s} {rmse:.4f}")
    return result


if __name__ == "__main__":
    main()
