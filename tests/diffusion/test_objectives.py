import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from lvdm.diffusion.guidance import GuidedDenoiser
from lvdm.diffusion.objectives import DDPM, RectifiedFlow
from lvdm.models.dit import DiT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2, context_dim=8)
    with torch.no_grad():  # move off the zero init so the model's output depends on its input
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx = torch.randn(2, 3, 8)
    mask = torch.ones(2, 3, dtype=torch.bool)
    return lambda x, t: dit(x, t, ctx, mask)


def noise(seed=0):
    return torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_diffusers_scheduler_driven_by_hand(model, shift):
    steps = 8
    ours = RectifiedFlow(shift=shift, num_sampling_steps=steps).sample(model, noise())
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    x = noise()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t.expand(2)), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler,scheduler_cls", [("ddim", DDIMScheduler), ("dpm_solver", DPMSolverMultistepScheduler)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_samplers_match_diffusers_scheduler_driven_by_hand(model, sampler, scheduler_cls, prediction_type,
                                                                assert_close_scaled):
    obj = DDPM(prediction_type=prediction_type, sampler=sampler, num_sampling_steps=10)
    ours = obj.sample(model, noise())
    extra = {"set_alpha_to_one": False} if sampler == "ddim" else {"algorithm_type": "dpmsolver++"}
    sched = scheduler_cls.from_config(
        DDPMScheduler(prediction_type=prediction_type, clip_sample=False).config, **extra
    )
    sched.set_timesteps(10)
    x = noise() * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(sched.scale_model_input(x, t), t.float().expand(2)), t, x).prev_sample
    assert_close_scaled(ours, x)


def test_ddim_matches_float64_formula(model):
    """DDIM (η = 0) written out in float64, independent of diffusers."""
    obj = DDPM(prediction_type="epsilon", sampler="ddim", num_sampling_steps=5)
    ours = obj.sample(model, noise())
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    ts = list(range(0, 1000, 200))[::-1]  # "leading" spacing: 800, 600, ..., 0
    x = noise().double()
    with torch.no_grad():
        for i, t in enumerate(ts):
            a = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else abar[0]
            eps = model(x.float(), torch.full((2,), float(t))).double()
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(ours.double(), x, rtol=1e-4, atol=1e-4)


def test_flow_training_pairs_float64(assert_close_scaled):
    obj = RectifiedFlow()
    x0, eps = noise(1), noise(2)
    seen = {}

    def fn(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    torch.manual_seed(0)
    loss = obj.training_loss(fn, x0, eps)
    t = (seen["t"] / 1000).double().view(-1, 1, 1, 1, 1)
    assert_close_scaled(seen["x_t"].double(), (1 - t) * x0.double() + t * eps.double())
    assert_close_scaled(loss.double(), ((eps - x0).double() ** 2).mean())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_training_pairs_float64(prediction_type):
    obj = DDPM(prediction_type=prediction_type)
    x0, eps = noise(1), noise(2)
    seen = {}

    def fn(x_t, t):
        seen["x_t"], seen["t"] = x_t, t.long()
        return torch.zeros_like(x_t)

    loss = obj.training_loss(fn, x0, eps)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[seen["t"]].view(-1, 1, 1, 1, 1)
    x0d, epsd = x0.double(), eps.double()
    torch.testing.assert_close(seen["x_t"].double(), abar.sqrt() * x0d + (1 - abar).sqrt() * epsd, rtol=1e-5, atol=1e-5)
    target = epsd if prediction_type == "epsilon" else abar.sqrt() * epsd - (1 - abar).sqrt() * x0d
    torch.testing.assert_close(loss.double(), (target**2).mean(), rtol=1e-5, atol=1e-5)


def test_logit_normal_and_resolution_shift():
    torch.manual_seed(0)
    x = torch.zeros(20000, 4, 1, 8, 8)
    t = RectifiedFlow().sample_time(x)
    assert abs(t.median().item() - 0.5) < 0.02 and t.min() > 0 and t.max() < 1
    big = torch.zeros(2, 4, 16, 32, 32)
    obj = RectifiedFlow(shift=1.0, resolution_aware=True, base_numel=4 * 32 * 32)
    assert obj.effective_shift(big) == pytest.approx(4.0)  # sqrt(16 frames)
    shifted = RectifiedFlow(shift=3.0).sample_time(x)
    assert shifted.median() > 0.7  # shift moves training times towards noise


def test_guidance_wrapper():
    calls = []

    def denoiser(x, t, ctx, mask):
        calls.append(x.shape[0])
        return x * ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)

    x = torch.ones(2, 1, 1, 1, 1)
    ctx, mask = torch.full((2, 3, 4), 2.0), torch.ones(2, 3, dtype=torch.bool)
    null, null_mask = torch.full((1, 1, 4), 1.0), torch.ones(1, 1, dtype=torch.bool)
    out = GuidedDenoiser(denoiser, ctx, mask, null, null_mask, scale=3.0)(x, torch.zeros(2))
    # padded null context: mean over 3 tokens of (1, 0, 0) = 1/3; cond = 2
    uncond, cond = 1 / 3, 2.0
    torch.testing.assert_close(out, torch.full_like(x, uncond + 3.0 * (cond - uncond)))
    assert calls == [4]
    GuidedDenoiser(denoiser, ctx, mask, null, null_mask, scale=1.0)(x, torch.zeros(2))
    assert calls[-1] == 2


@pytest.mark.parametrize("prediction", ["velocity", "sample"])
@pytest.mark.parametrize("shift", [1.0, 2.5])
def test_flow_oracle_for_a_point_mass_recovers_the_point(prediction, shift):
    """For data that is a single point x*, the exact network output is known in closed form
    (velocity (x_t - x*)/t, or the sample x*); the sampler must land on x*."""
    target = noise(5)
    obj = RectifiedFlow(prediction=prediction, shift=shift, num_sampling_steps=7)

    def oracle(x_t, t_scaled):
        if prediction == "sample":
            return target.expand_as(x_t)
        t = (t_scaled / obj.time_scale).view(-1, 1, 1, 1, 1)
        return (x_t - target) / t

    torch.testing.assert_close(obj.sample(oracle, noise(6)), target, rtol=1e-5, atol=1e-5)
    # the training loss of the oracle is zero (up to the min_t clamp, which the draw avoids)
    torch.manual_seed(0)
    obj.logit_std = 0.1
    assert obj.training_loss(oracle, target, noise(7)).item() < 1e-8


def test_flow_loss_at_float64_and_grid(assert_close_scaled):
    obj = RectifiedFlow(prediction="sample", shift=3.0)
    x0, eps = noise(1), noise(2)
    t = torch.tensor([0.25, 0.8])
    pred = noise(3)
    per_sample = obj.loss_at(lambda x_t, ts: pred, x0, eps, t)
    tb = t.double().clamp(min=obj.min_t).view(-1, 1, 1, 1, 1)
    x_t = (1 - tb) * x0.double() + tb * eps.double()
    v = (x_t - pred.double()) / tb  # a sample prediction turned into a velocity
    expected = ((v - (eps - x0).double()) ** 2).flatten(1).mean(1)
    assert_close_scaled(per_sample.double(), expected)
    torch.testing.assert_close(obj.fixed_timesteps(3), torch.tensor([0.25, 0.5, 0.75]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_loss_at_float64_and_grid(prediction_type):
    obj = DDPM(prediction_type=prediction_type)
    x0, eps = noise(1), noise(2)
    t = torch.tensor([10, 900])
    per_sample = obj.loss_at(lambda x_t, ts: torch.zeros_like(x_t), x0, eps, t)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].view(-1, 1, 1, 1, 1)
    x0d, epsd = x0.double(), eps.double()
    target = epsd if prediction_type == "epsilon" else abar.sqrt() * epsd - (1 - abar).sqrt() * x0d
    torch.testing.assert_close(per_sample.double(), (target**2).flatten(1).mean(1), rtol=1e-5, atol=1e-5)
    assert obj.fixed_timesteps(4).tolist() == [200, 400, 600, 800]


def test_training_loss_is_loss_at_sampled_times(model):
    """The training loss goes through loss_at: same noise and the same sampled time agree."""
    obj = RectifiedFlow()
    x0, eps = noise(1), noise(2)
    torch.manual_seed(5)
    loss = obj.training_loss(model, x0, eps)
    torch.manual_seed(5)
    t = obj.sample_time(x0)
    torch.testing.assert_close(loss, obj.loss_at(model, x0, eps, t).mean())
