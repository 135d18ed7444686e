"""Guidance schedules (lvdm.diffusion.guidance.GuidanceSchedule): guidance on an interval of
noise levels, CFG-Zero*, zero-init and APG; known answers against float64 references written
here from the papers' formulas, evaluation counts, unchanged defaults and refused settings."""

import numpy as np
import pytest
import torch

from lvdm.diffusion.guidance import ClassGuidedDenoiser, GuidanceSchedule, GuidedDenoiser, apg, cfg_zero_star
from lvdm.diffusion.objectives import DDPM, RectifiedFlow


def _bias(t, x):
    """``t / 1000`` shaped over ``x`` (``t`` is ``[B]`` or per-frame ``[B, T]``)."""
    t = t.to(x.dtype) / 1000
    return t[:, None, :, None, None] if t.ndim == 2 else t.view(-1, *([1] * (x.ndim - 1)))


class CountingDenoiser:
    """A text denoiser whose output depends on the text: ``x · mean(ctx) + t / 1000`` (context rows
    of 2.0 for the prompt, 1.0 for the null caption); it records the batch of every call."""

    def __init__(self):
        self.batches, self.times = [], []

    def __call__(self, x, t, ctx, mask):
        self.batches.append(x.shape[0])
        self.times.append(float(t.flatten()[0]))
        scale = ctx.mean(dim=(1, 2)).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return x * scale + torch.sin(x) * (scale - 1.5) + _bias(t, x)


def guided(scale, schedule=None, objective=None, dtype=torch.float32):
    denoiser = CountingDenoiser()
    ctx, mask = torch.full((2, 3, 4), 2.0, dtype=dtype), torch.ones(2, 3, dtype=torch.bool)
    null, null_mask = torch.full((1, 3, 4), 1.0, dtype=dtype), torch.ones(1, 3, dtype=torch.bool)
    return GuidedDenoiser(denoiser, ctx, mask, null, null_mask, scale, schedule, objective), denoiser


def branches(x, t):
    """The conditional and unconditional outputs of :class:`CountingDenoiser` at ``(x, t)``."""
    return 2.0 * x + 0.5 * torch.sin(x) + _bias(t, x), 1.0 * x - 0.5 * torch.sin(x) + _bias(t, x)


def test_the_default_schedule_is_todays_guidance_bit_for_bit():
    """No schedule, or the default one, samples exactly what ``u + scale · (c − u)`` did."""
    flow, noise = RectifiedFlow(num_sampling_steps=6), torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def old(x, t):
        c, u = branches(x, t)
        return u + 4.0 * (c - u)

    expected = flow.sample(old, noise)
    for schedule in (None, GuidanceSchedule()):
        model_fn, denoiser = guided(4.0, schedule, flow)
        assert torch.equal(flow.sample(model_fn, noise), expected)
        assert denoiser.batches == [4] * 6


@pytest.mark.parametrize("objective", [RectifiedFlow(num_sampling_steps=10), DDPM(num_sampling_steps=10)],
                         ids=["rectified_flow", "ddpm"])
def test_guidance_interval_evaluates_the_conditional_branch_alone_outside_it(objective):
    """Steps whose noise level is outside [0.3, 0.7] make one evaluation of the prompts' rows
    (batch 2), the others one doubled evaluation (batch 4); t is rectified flow's t
    (time_scale 1000) or the DDPM timestep / 1000."""
    model_fn, denoiser = guided(3.0, GuidanceSchedule(interval=(0.3, 0.7)), objective)
    objective.sample(model_fn, torch.randn(2, 3, 1, 4, 4))
    inside = [0.3 <= t / 1000 <= 0.7 for t in denoiser.times]
    assert denoiser.batches == [4 if i else 2 for i in inside]
    assert 0 < sum(inside) < len(inside)  # both kinds of step happened


def test_outside_the_interval_the_output_is_the_conditional_prediction():
    flow = RectifiedFlow()
    x, t = torch.randn(2, 3, 1, 4, 4), torch.full((2,), 900.0)  # level 0.9
    model_fn, _ = guided(3.0, GuidanceSchedule(interval=(0.2, 0.8)), flow)
    assert torch.equal(model_fn(x, t), branches(x, t)[0])
    c, u = branches(x, t * 0.5)  # level 0.45: guided
    torch.testing.assert_close(model_fn(x, t * 0.5), u + 3.0 * (c - u))


def test_a_batch_at_mixed_noise_levels_is_guided_per_sample():
    """Each sample is guided by its own noise level (per-frame times: its noisiest frame's)."""
    model_fn, _ = guided(3.0, GuidanceSchedule(interval=(0.2, 0.8)), RectifiedFlow())
    x, t = torch.randn(2, 3, 2, 4, 4), torch.tensor([[0.0, 500.0], [0.0, 900.0]])
    c, u = branches(x, t)
    out = model_fn(x, t)
    torch.testing.assert_close(out[0], (u + 3.0 * (c - u))[0])
    assert torch.equal(out[1], c[1])


def test_an_empty_interval_samples_what_no_guidance_samples():
    flow, noise = RectifiedFlow(num_sampling_steps=5), torch.randn(2, 3, 1, 4, 4)
    never, counted = guided(5.0, GuidanceSchedule(interval=(0.0, 0.0)), flow)
    unguided, _ = guided(1.0)
    assert torch.equal(flow.sample(never, noise), flow.sample(unguided, noise))
    assert counted.batches == [2] * 5


def test_cfg_zero_star_known_answers():
    # by hand: c = (3, 1), u = (1, 1): s* = <c, u> / |u|² = 4 / 2 = 2; 2u + 2 · (c − 2u) = (4, 0)
    c, u = torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(cfg_zero_star(c, u, 2.0), torch.tensor([[4.0, 0.0]]))
    # float64 reference, the paper's form (1 − w)·s*·u + w·c, per sample
    gen = torch.Generator().manual_seed(1)
    c, u = torch.randn(3, 2, 2, 3, 3, generator=gen, dtype=torch.float64), torch.randn(3, 2, 2, 3, 3, generator=gen,
                                                                                       dtype=torch.float64)
    ref = []
    for ci, ui in zip(c.numpy(), u.numpy()):
        s = np.dot(ci.ravel(), ui.ravel()) / np.dot(ui.ravel(), ui.ravel())
        ref.append((1 - 5.0) * s * ui + 5.0 * ci)
    torch.testing.assert_close(cfg_zero_star(c, u, 5.0), torch.from_numpy(np.stack(ref)), rtol=1e-12, atol=1e-12)


def apg_reference(c, u, w, eta, r, beta, previous):
    """Sadat et al. 2024, Algorithm 1, per sample in numpy: the update with momentum, its norm
    capped at r, its projection on the conditional prediction down-weighted by eta."""
    update = c - u + (beta * previous if previous is not None else 0)
    out = []
    for ci, di in zip(c, update):
        d = di.ravel().copy()
        if r > 0:
            d *= min(1.0, r / np.linalg.norm(d))
        parallel = np.dot(d, ci.ravel()) / np.dot(ci.ravel(), ci.ravel()) * ci.ravel()
        out.append((ci.ravel() + (w - 1) * ((d - parallel) + eta * parallel)).reshape(ci.shape))
    return np.stack(out), update


def test_apg_known_answers():
    # by hand: c = (1, 0), u = (0, 1): Δ = (1, −1), Δ∥ = (1, 0), Δ⊥ = (0, −1); w = 3, η = 0: (1, −2)
    out, _ = apg(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 3.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0]]))
    gen = torch.Generator().manual_seed(2)
    c1, u1, c2, u2 = (torch.randn(2, 2, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    ours, previous = apg(c1, u1, 4.0, eta=0.25, norm_threshold=1.5, momentum=-0.5)
    ref, ref_previous = apg_reference(c1.numpy(), u1.numpy(), 4.0, 0.25, 1.5, -0.5, None)
    torch.testing.assert_close(ours, torch.from_numpy(ref), rtol=1e-12, atol=1e-12)
    ours, _ = apg(c2, u2, 4.0, eta=0.25, norm_threshold=1.5, momentum=-0.5, previous=previous)  # momentum used
    ref, _ = apg_reference(c2.numpy(), u2.numpy(), 4.0, 0.25, 1.5, -0.5, ref_previous)
    torch.testing.assert_close(ours, torch.from_numpy(ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction, target", [("velocity", "eps_minus_x0"), ("velocity", "x0_minus_eps"),
                                                ("sample", "eps_minus_x0")])
def test_apg_guides_the_denoised_prediction_of_any_flow_convention(prediction, target):
    """APG is applied to x0 = x_t − t·v (t = 0.6) and converted back to the network's own output."""
    flow = RectifiedFlow(prediction=prediction, target=target)
    schedule = GuidanceSchedule(method="apg", apg_eta=0.5, apg_norm_threshold=2.0, apg_momentum=-0.3)
    model_fn, _ = guided(3.0, schedule, flow, dtype=torch.float64)
    x, t = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64), torch.full((2,), 600.0, dtype=torch.float64)
    previous = None
    for _ in range(2):  # the second step carries the first one's momentum
        out = model_fn(x, t)
        c, u = branches(x, t)
        to_v = {"eps_minus_x0": 1, "x0_minus_eps": -1}[target]
        v_c, v_u = ((to_v * c, to_v * u) if prediction == "velocity" else ((x - c) / 0.6, (x - u) / 0.6))
        x0, previous = apg_reference((x - 0.6 * v_c).numpy(), (x - 0.6 * v_u).numpy(), 3.0, 0.5, 2.0, -0.3, previous)
        v = (x - torch.from_numpy(x0)) / 0.6
        expected = to_v * v if prediction == "velocity" else x - 0.6 * v
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_cfg_zero_star_converts_a_sample_prediction_to_velocities():
    flow = RectifiedFlow(prediction="sample")
    model_fn, _ = guided(2.5, GuidanceSchedule(method="cfg_zero_star"), flow, dtype=torch.float64)
    x, t = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64), torch.full((2,), 500.0, dtype=torch.float64)
    c, u = branches(x, t)
    v = cfg_zero_star((x - c) / 0.5, (x - u) / 0.5, 2.5)
    torch.testing.assert_close(model_fn(x, t), x - 0.5 * v, rtol=1e-12, atol=1e-12)


def test_apg_leaves_given_frames_finite():
    """Per-frame times (masked frames, t = 0 on given ones) must not divide by zero."""
    flow = RectifiedFlow()
    model_fn, _ = guided(4.0, GuidanceSchedule(method="apg", apg_eta=1.0), flow)
    x, t = torch.randn(2, 3, 3, 4, 4), torch.tensor([[0.0, 700.0, 700.0]] * 2)
    out = model_fn(x, t)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, 0], branches(x, t)[0][:, :, 0])  # given frames: the conditional prediction


@pytest.mark.parametrize("prediction", ["velocity", "sample"])
def test_zero_init_moves_nothing_and_evaluates_nothing_for_its_steps(prediction):
    flow = RectifiedFlow(num_sampling_steps=6, prediction=prediction)
    model_fn, denoiser = guided(3.0, GuidanceSchedule(method="cfg_zero_star", zero_init_steps=2), flow)
    x, t = torch.randn(2, 3, 1, 4, 4), torch.full((2,), 1000.0)
    for _ in range(2):
        assert torch.equal(flow.output_velocity(model_fn(x, t), x, t / 1000), torch.zeros_like(x))
    assert denoiser.batches == []
    model_fn(x, t)
    assert denoiser.batches == [4]
    # in a sampler: the noise is untouched by the first two steps, four evaluations follow
    model_fn, denoiser = guided(3.0, GuidanceSchedule(zero_init_steps=2), flow)
    flow.sample(model_fn, x)
    grid = flow.timesteps(6, x)
    assert denoiser.batches == [4] * 4 and denoiser.times[0] == pytest.approx(float(grid[2]) * 1000)


def test_class_guidance_takes_a_schedule():
    class ClassDenoiser(torch.nn.Module):
        num_classes, in_channels = 3, 2

        def forward(self, x, t, class_labels):
            self.batches.append(x.shape[0])
            return torch.cat([x * (class_labels.view(-1, 1, 1, 1, 1) + 1.0), x], dim=1)

    denoiser = ClassDenoiser()
    denoiser.batches = []
    model_fn = ClassGuidedDenoiser(denoiser, torch.tensor([0, 2]), 2.0, GuidanceSchedule(interval=(0.0, 0.5)),
                                   RectifiedFlow())
    x = torch.ones(2, 2, 1, 2, 2)
    assert torch.equal(model_fn(x, torch.full((2,), 800.0)), x * torch.tensor([1.0, 3.0]).view(-1, 1, 1, 1, 1))
    out = model_fn(x, torch.full((2,), 300.0))  # guided: null label 3 gives 4x; u + 2 (c − u)
    assert torch.equal(out, x * torch.tensor([-2.0, 2.0]).view(-1, 1, 1, 1, 1))
    assert denoiser.batches == [2, 4]


@pytest.mark.parametrize("settings, message", [
    ({"interval": (0.8, 0.2)}, r"^guidance interval \(lo, hi\) must have 0 <= lo <= hi <= 1 \(noise levels\), got \(0.8, 0.2\)$"),
    ({"interval": (-0.1, 0.5)}, r"^guidance interval .* got \(-0.1, 0.5\)$"),
    ({"interval": (0.0, 1.5)}, r"^guidance interval .* got \(0.0, 1.5\)$"),
    ({"interval": (0.1,)}, r"^guidance interval must be two numbers \(lo, hi\), got \(0.1,\)$"),
    ({"interval": (0.1, float("nan"))}, r"^guidance interval must be two numbers"),
    ({"method": "pag"}, r"^guidance method must be one of cfg, cfg_zero_star, apg, got 'pag'$"),
    ({"zero_init_steps": -1}, r"^zero_init_steps must be a whole number >= 0, got -1$"),
    ({"method": "apg", "apg_eta": -0.5}, r"^apg_eta must be >= 0, got -0.5$"),
    ({"method": "apg", "apg_norm_threshold": -1.0}, r"^apg_norm_threshold must be >= 0 \(0: no cap\), got -1.0$"),
    ({"method": "apg", "apg_momentum": 1.0}, r"^apg_momentum must be in \(-1, 1\) \(0: none\), got 1.0$"),
    ({"apg_eta": 0.5}, r"^apg_eta, apg_norm_threshold and apg_momentum are APG settings; method is 'cfg'$"),
])
def test_bad_schedules_are_refused_in_one_line(settings, message):
    with pytest.raises(ValueError, match=message):
        GuidanceSchedule(**settings)


def test_velocity_methods_need_a_rectified_flow_and_schedules_an_objective():
    with pytest.raises(ValueError, match=r"^guidance method 'cfg_zero_star' and zero_init_steps work on velocities: "
                                         r"they need a RectifiedFlow objective, got DDPM$"):
        guided(3.0, GuidanceSchedule(method="cfg_zero_star"), DDPM())
    with pytest.raises(ValueError, match=r"^a guidance schedule needs the sampling objective"):
        guided(3.0, GuidanceSchedule(interval=(0.1, 0.9)))
