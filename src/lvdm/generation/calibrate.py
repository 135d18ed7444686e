"""``lvdm cache calibrate``: sample a few prompts in full, fit the model's step-cache calibration
(:mod:`lvdm.diffusion.cache_calibration`) and save it next to the checkpoint, where ``lvdm
sample --step_cache calibrated`` and the app find it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from lvdm.diffusion.cache_calibration import Calibration, calibrate, calibration_path, recording, write_calibration


def calibrate_step_cache(checkpoint: str, prompts: Optional[list[str]] = None, prompt_file: Optional[str] = None,
                         out: Optional[str] = None, steps: Optional[int] = None, guidance: Optional[float] = None,
                         seed: int = 0, target_speedup: float = 2.0, degree: int = 4, use_ema: bool = True,
                         device: str = "auto") -> Calibration:
    """Calibrate step caching for a checkpoint: sample the prompts in full (one batch) while recording each
    step's change of the first block's modulated input, of the first block's residual and of the block stack's
    residual; fit TeaCache's rescaling polynomial (``numpy.polyfit`` of the residual change on the input change)
    and suggest, for ``teacache`` and ``first_block``, the smallest threshold whose replay on the recorded run
    reaches ``target_speedup`` fewer block-stack runs. Sample with ``lvdm sample --step_cache calibrated``
    (an explicit number still overrides; the polynomial is used either way).

    Args:
        checkpoint: a ``.ckpt`` written by ``lvdm fit``, a DeepSpeed checkpoint directory or an exported
            ``.safetensors``.
        prompts: prompts to sample, e.g. '["a red square moving left", "a blue circle moving up"]'.
        prompt_file: a text file, one prompt a line (after ``prompts``). A few (4-8) typical prompts suffice;
            they are sampled together, and the suggested speed-up holds for batches of about this size.
        out: the calibration file (default: ``<checkpoint>.step_cache.json``, which loading the checkpoint reads).
        steps: sampler steps (default: the objective's); a threshold holds for about this step count.
        guidance: classifier-free guidance scale (default: the model's).
        seed: base noise seed.
        target_speedup: fewer block-stack runs the suggested thresholds aim at (> 1).
        degree: degree of the rescaling polynomial (TeaCache: 4).
        use_ema: use the EMA weights stored in the checkpoint, when there are any.
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto``.
    """
    from lvdm.generation.generator import Generator
    from lvdm.utils import read_prompt_file

    texts = list(prompts or []) + (read_prompt_file(prompt_file) if prompt_file else [])
    if not texts:
        raise ValueError("give the prompts to calibrate on (--prompts or --prompt_file)")
    if not target_speedup > 1:
        raise ValueError(f"target_speedup must be > 1, got {target_speedup}")
    path = Path(out) if out else calibration_path(checkpoint)
    module = Generator(checkpoint, use_ema=use_ema, device=device).module
    with torch.no_grad(), recording(module.denoiser) as recorder:
        module.generate(texts, num_steps=steps, guidance_scale=guidance, seed=seed)
    result = calibrate(recorder, target_speedup, degree)
    write_calibration(result, path)
    for mode, threshold in result.thresholds.items():
        print(f"{mode}: threshold {threshold:.4g} runs the block stack {result.speedups[mode]:.2f}x less often "
              f"over {result.steps} steps (recorded run)")
    print(f"wrote {path}")
    return result
