"""Presets sample as their sources: CogVideoX 2B's chain and DDIM equal diffusers'
``CogVideoXDDIMScheduler`` (hub scheduler_config.json), Mochi's Euler grid equals MochiPipeline's
linear-quadratic sigmas on ``FlowMatchEulerDiscreteScheduler(invert_sigmas=True)``; the default
DDPM and RectifiedFlow schedules stay what they were."""

import numpy as np
import pytest
import torch

from lvdm.diffusion.objectives import DDPM, RectifiedFlow
from lvdm.models.presets import TABLE


def _objective(preset: str):
    path, kwargs = TABLE[preset].sampler.objective
    assert path.rsplit(".", 1)[-1] in ("DDPM", "RectifiedFlow")
    return (DDPM if path.endswith("DDPM") else RectifiedFlow)(**kwargs)


def _toy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a network: smooth in ``x`` and the timestep it sees."""
    return torch.tanh(x) * torch.cos(t.view(-1, 1, 1, 1, 1) / 700) + 0.1 * x


def _cogvideox_2b_scheduler():
    from diffusers import CogVideoXDDIMScheduler

    # THUDM/CogVideoX-2b scheduler/scheduler_config.json
    return CogVideoXDDIMScheduler(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085,
                                  clip_sample=False, num_train_timesteps=1000, prediction_type="v_prediction",
                                  rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=3.0,
                                  steps_offset=0, timestep_spacing="trailing")


def test_cogvideox_2b_chain_and_ddim_match_diffusers():
    objective, source = _objective("cogvideox-2b"), _cogvideox_2b_scheduler()
    assert torch.equal(objective.train_scheduler.alphas_cumprod, source.alphas_cumprod)
    assert float(source.alphas_cumprod[-1]) == 0.0  # zero terminal SNR
    noise = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = objective.sample(lambda x, t: _toy(x, t), noise, num_steps=10)
    source.set_timesteps(10)
    assert source.timesteps[0] == 999  # trailing
    x = noise.clone()
    for t in source.timesteps:
        x = source.step(_toy(x, t.float().expand(x.shape[0])), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6 * float(x.abs().max()))
    old = DDPM(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert not torch.allclose(old.sample(lambda x, t: _toy(x, t), noise, num_steps=10), x, rtol=1e-3)


def test_cogvideox_5b_dpm_matches_the_pipeline_loop():
    from diffusers import CogVideoXDPMScheduler

    objective = _objective("cogvideox-5b")
    # CogVideo's 5B demo: CogVideoXDPMScheduler.from_config(the 5b folder's, timestep_spacing="trailing")
    source = CogVideoXDPMScheduler(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                                   prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                                   snr_shift_scale=1.0, timestep_spacing="trailing")
    assert torch.equal(objective.train_scheduler.alphas_cumprod, source.alphas_cumprod)
    noise = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    ours = objective.sample(lambda x, t: _toy(x, t), noise, num_steps=6)
    source.set_timesteps(6)
    x, x0, generator = noise.clone(), None, torch.Generator().manual_seed(objective.noise_seed)
    for i, t in enumerate(source.timesteps):  # CogVideoXPipeline's loop
        back = source.timesteps[i - 1] if i > 0 else None
        x, x0 = source.step(_toy(x, t.float().expand(1)), x0, t, back, x, generator=generator, return_dict=False)
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6 * float(x.abs().max()))
    torch.testing.assert_close(objective.sample(lambda x, t: _toy(x, t), noise, num_steps=6), ours)  # reproducible


def test_ddpm_options_are_checked():
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDPM(timestep_spacing="even")


def test_ddpm_defaults_unchanged():
    from diffusers import DDIMScheduler, DDPMScheduler

    old = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                        prediction_type="epsilon", clip_sample=False)
    objective = DDPM()
    assert dict(objective.train_scheduler.config) == dict(old.config)
    sampler, expected = objective.make_sampler(), DDIMScheduler.from_config(old.config, set_alpha_to_one=False)
    assert type(sampler) is DDIMScheduler and dict(sampler.config) == dict(expected.config)
    dpm = DDPM(sampler="dpm_solver").make_sampler()
    assert dpm.config.timestep_spacing == "linspace"  # DPM-Solver's own default, as before


def _mochi_lq(num_steps: int) -> list:
    from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

    return linear_quadratic_schedule(num_steps, 0.025)


def test_mochi_grid_is_the_pipelines():
    from diffusers import FlowMatchEulerDiscreteScheduler

    objective = _objective("mochi-1-preview")
    x = torch.zeros(1, 12, 3, 8, 8)
    grid = objective.timesteps(64, x)
    torch.testing.assert_close(grid[:-1], torch.tensor(_mochi_lq(64), dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert grid[0] == 1.0 and grid[-1] == 0.0
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)  # genmo/mochi-1-preview's scheduler folder
    scheduler.set_timesteps(sigmas=np.array(_mochi_lq(64)))
    assert torch.equal(scheduler.sigmas, (1 - grid.float()))  # inverted: 0 = noise, terminal 1
    assert torch.equal(scheduler.timesteps, (1 - grid[:-1].float()) * 1000)


def test_mochi_euler_matches_the_scheduler_loop():
    from diffusers import FlowMatchEulerDiscreteScheduler

    objective = _objective("mochi-1-preview")
    noise = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    # lvdm hands t · 1000 (1 = noise); Mochi's transformer is fed the inverted 1000 - that
    ours = objective.sample(lambda x, t: _toy(x, 1000 - t), noise, num_steps=8)
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    scheduler.set_timesteps(sigmas=np.array(_mochi_lq(8)))
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(_toy(x, t.expand(1)), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6 * float(x.abs().max()))  # measured 1.0e-7


def test_rectified_flow_default_grid_unchanged_and_schedule_checked():
    objective, x = RectifiedFlow(shift=3.0), torch.zeros(1, 4, 1, 8, 8)
    expected = RectifiedFlow.shift_time(torch.linspace(1.0, 0.0, 11, dtype=torch.float64), 3.0)
    assert torch.equal(objective.timesteps(10, x), expected)
    with pytest.raises(ValueError, match="schedule"):
        RectifiedFlow(schedule="linear_quadratic", sampler="unipc")
    with pytest.raises(ValueError, match="at least 2 steps"):
        RectifiedFlow(schedule="linear_quadratic").timesteps(1, x)
