"""The sampling grids of the published flow models' presets against their sources' formulas:
Open-Sora 2.0's ``get_schedule`` (shift linear in the tokens of a frame, times sqrt(latent frames)),
LTXPipeline's dynamic shift (``calculate_shift`` on the latent token count, then the scheduler's
``shift_terminal`` stretch) and Wan's UniPC scheduler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.presets import from_name


def opensora2_schedule(num_steps: int, height: int, width: int, frames: int) -> list[float]:
    """Open-Sora 2.0's opensora/utils/sampling.py get_schedule, written from its description: the
    shift is the line through (256 tokens, 1) and (4096 tokens, 3) at the tokens of one latent frame
    (h·w / 2², its patch 2), times sqrt(latent frames); t' = s t / (1 + (s − 1) t) on linspace(1, 0)."""
    tokens = (height * width) // 4
    alpha = (1 + (3 - 1) / (4096 - 256) * (tokens - 256)) * math.sqrt(frames)
    t = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    return (alpha * t / (1 + (alpha - 1) * t)).tolist()


@pytest.mark.parametrize("latent", [(1, 32, 32), (33, 32, 32), (1, 96, 96), (9, 48, 80), (5, 30, 53)])
def test_opensora2_preset_shift_is_linear_in_tokens(latent):
    """256px (32 × 32 latents, 256 tokens: shift sqrt(T)), 768px (96 × 96: 2304 tokens, shift 2.07 on
    one frame, where sqrt(area) gave 3), a non-square grid and an odd one (floored token count)."""
    objective = from_name("opensora-2.0").sampler.build_objective()
    t, h, w = latent
    ours = objective.timesteps(10, torch.zeros(1, 16, t, h, w))
    torch.testing.assert_close(ours, torch.tensor(opensora2_schedule(10, h, w, t), dtype=torch.float64),
                               rtol=1e-12, atol=0)


#: Lightricks/LTX-Video scheduler/scheduler_config.json, as ports quote it.
LTX_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                     base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)


def calculate_shift(tokens: int, base_tokens=1024, max_tokens=4096, base_shift=0.95, max_shift=2.05) -> float:
    """diffusers' calculate_shift (LTXPipeline, Flux), from its definition: mu on the line through
    (base_tokens, base_shift) and (max_tokens, max_shift); LTXPipeline passes its scheduler's anchors."""
    return base_shift + (max_shift - base_shift) / (max_tokens - base_tokens) * (tokens - base_tokens)


@pytest.mark.parametrize("latent,steps", [((16, 16, 24), 50), ((3, 4, 8), 4), ((5, 15, 22), 20), ((1, 64, 64), 8)])
def test_ltx_preset_dynamic_shift_equals_ltx_pipeline(latent, steps):
    """LTXPipeline: sigmas linspace(1, 1/N, N), mu = calculate_shift(t·h·w, 1024, 4096, 0.95, 2.05),
    then FlowMatchEulerDiscreteScheduler's exponential time shift and terminal stretch; the grid lvdm
    samples on equals the scheduler's sigmas (float32) at 768x512x121 (the old fixed 16.17) and at others."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    t, h, w = latent
    scheduler = FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER)
    mu = calculate_shift(t * h * w)
    scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    objective = from_name("ltx-video-2b").sampler.build_objective()
    ours = objective.timesteps(steps, torch.zeros(1, 128, t, h, w))
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=1e-6, atol=0)
    assert objective.effective_shift(torch.zeros(1, 128, t, h, w)) == pytest.approx(math.exp(mu), rel=1e-12)


def test_wan_preset_runs_wans_unipc_scheduler():
    """Wan's sampler: diffusers' UniPCMultistepScheduler in its flow form with the preset's shift."""
    objective = from_name("wan2.1-t2v-1.3b").sampler.build_objective()
    assert objective.sampler == "unipc"
    scheduler = objective.unipc_scheduler(objective.effective_shift(torch.zeros(1, 16, 21, 60, 104)))
    config = scheduler.config
    assert (config.prediction_type, config.use_flow_sigmas, config.flow_shift, config.solver_order,
            config.solver_type) == ("flow_prediction", True, 3.0, 2, "bh2")


def test_one_step_grid_and_bad_options():
    objective = RectifiedFlow(shift_terminal=0.1, token_shift="flux", shift_anchors=(1024, 0.95, 4096, 2.05),
                              token_patch=(1, 1, 1))
    assert objective.timesteps(1, torch.zeros(1, 4, 1, 4, 4)).tolist() == [1.0, 0.0]  # nothing to stretch
    with pytest.raises(ValueError, match="RectifiedFlow.token_shift must be none, opensora2 or flux, got area"):
        RectifiedFlow(token_shift="area")
    with pytest.raises(ValueError, match=r"RectifiedFlow.shift_anchors must be \(n0, s0, n1, s1\)"):
        RectifiedFlow(shift_anchors=(256, 1.0, 256, 3.0))
    with pytest.raises(ValueError, match="sampler='unipc' .* needs time_scale=1000 and prediction='velocity'"):
        RectifiedFlow(sampler="unipc", time_scale=1.0)
