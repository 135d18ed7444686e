"""Masked-frame conditioning: mask policies, the masked losses against hand computations,
samplers that keep given frames clean, guidance and the DiT's per-frame timesteps."""

import pytest
import torch

from lvdm.diffusion.guidance import GuidedDenoiser
from lvdm.diffusion.masking import FrameMasks, frame_timesteps, masked_mse
from lvdm.diffusion.objectives import DDPM, RectifiedFlow
from lvdm.models.dit import DiT


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


MASK = torch.tensor([[True, False, False, False], [True, True, False, True]])  # [B=2, T=4]


# ---------------------------------------------------------------- policies
@pytest.mark.parametrize("task,check", [
    ("image_to_video", lambda row: row.tolist() == [True] + [False] * 7),
    ("loop", lambda row: row.tolist() == [True] + [False] * 6 + [True]),
    ("continuation", lambda row: 1 <= row.sum() <= 4 and row[: int(row.sum())].all()),
    ("random", lambda row: 1 <= row.sum() <= 7),
])
def test_each_policy_alone(task, check):
    masks = FrameMasks(**{task: 1.0})(64, 8, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (64, 8) and masks.dtype == torch.bool
    assert all(check(row) for row in masks)
    assert (~masks).any(dim=1).all(), "every sample must keep a frame to generate"


def test_policy_mix_frequencies_and_images():
    policy = FrameMasks(image_to_video=0.3, loop=0.2)
    masks = policy(4000, 8, generator=torch.Generator().manual_seed(1))
    i2v = (masks[:, 0] & ~masks[:, 1:].any(dim=1)).float().mean()
    loop = (masks[:, 0] & masks[:, -1]).float().mean()
    none = (~masks.any(dim=1)).float().mean()
    assert abs(i2v - 0.3) < 0.03 and abs(loop - 0.2) < 0.03 and abs(none - 0.5) < 0.03
    assert not policy(5, 1).any(), "a single frame (an image) is never given"


@pytest.mark.parametrize("kwargs,fragment", [({"loop": 1.5}, "loop"), ({"loop": 0.6, "random": 0.6}, "sum")])
def test_policy_rejects_bad_probabilities(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        FrameMasks(**kwargs)


# ---------------------------------------------------------------- losses by hand
def _recording_model(pred):
    seen = {}

    def fn(x_t, t, **cond):
        seen.update(x_t=x_t.clone(), t=t.clone(), cond=cond)
        return pred

    return fn, seen


def _hand_masked_mean(pred, target, mask):
    """Loop over samples and generated frames, float64."""
    out = []
    for b in range(pred.shape[0]):
        total, count = 0.0, 0
        for f in range(pred.shape[2]):
            if not mask[b, f]:
                d = (pred[b, :, f].double() - target[b, :, f].double()) ** 2
                total += d.sum().item()
                count += d.numel()
        out.append(total / count)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["velocity", "sample"])
def test_flow_masked_loss_by_hand(prediction, assert_close_scaled):
    obj = RectifiedFlow(prediction=prediction)
    x0, eps, pred = randn(2, 3, 4, 2, 2, seed=1), randn(2, 3, 4, 2, 2, seed=2), randn(2, 3, 4, 2, 2, seed=3)
    t = torch.tensor([0.3, 0.8])
    fn, seen = _recording_model(pred)
    loss = obj.loss_at(fn, x0, eps, t, MASK, context="ctx")
    assert seen["cond"] == {"context": "ctx"}, "conditioning keywords pass through to the model"
    # the network saw the given frames clean at time 0, the others noised at t
    for b in range(2):
        for f in range(4):
            tf = 0.0 if MASK[b, f] else t[b].item()
            torch.testing.assert_close(seen["t"][b, f], torch.tensor(tf * 1000.0))
            expect = x0[b, :, f] if MASK[b, f] else (1 - tf) * x0[b, :, f] + tf * eps[b, :, f]
            torch.testing.assert_close(seen["x_t"][b, :, f], expect)
    if prediction == "velocity":
        v = pred
    else:  # v = (x_t - x0_hat) / t, per frame
        tb = torch.where(MASK, torch.tensor(0.05), t[:, None].expand(2, 4))[:, None, :, None, None]
        v = (seen["x_t"] - pred) / tb
    assert_close_scaled(loss.double(), _hand_masked_mean(v, eps - x0, MASK))  # a float32 loss
    # the prediction on given frames does not matter
    changed = pred.clone()
    changed[:, :, 0] += 100.0
    torch.testing.assert_close(obj.loss_at(_recording_model(changed)[0], x0, eps, t, MASK), loss)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_masked_loss_by_hand(prediction_type, assert_close_scaled):
    obj = DDPM(prediction_type=prediction_type)
    x0, eps, pred = randn(2, 3, 4, 2, 2, seed=4), randn(2, 3, 4, 2, 2, seed=5), randn(2, 3, 4, 2, 2, seed=6)
    t = torch.tensor([100, 700])
    fn, seen = _recording_model(pred)
    loss = obj.loss_at(fn, x0, eps, t, MASK)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    a = abar[t].sqrt()[:, None, None, None, None]
    s = (1 - abar[t]).sqrt()[:, None, None, None, None]
    x_t = a * x0.double() + s * eps.double()
    target = eps.double() if prediction_type == "epsilon" else a * eps.double() - s * x0.double()
    m = MASK[:, None, :, None, None]
    assert_close_scaled(seen["x_t"].double(), torch.where(m, x0.double(), x_t))
    torch.testing.assert_close(seen["t"], torch.where(MASK, 0.0, t[:, None].float().expand(2, 4)))
    assert_close_scaled(loss.double(), _hand_masked_mean(pred, target, MASK))


def test_no_mask_and_empty_mask_agree():
    obj = RectifiedFlow()
    x0, eps = randn(2, 3, 4, 2, 2, seed=1), randn(2, 3, 4, 2, 2, seed=2)
    fn = lambda x_t, t: x_t * 0.5  # noqa: E731 (t may be [B] or [B, T]; unused)
    t = torch.tensor([0.3, 0.8])
    torch.testing.assert_close(obj.loss_at(fn, x0, eps, t), obj.loss_at(fn, x0, eps, t, torch.zeros(2, 4, dtype=torch.bool)))


def test_masked_mse_rejects_all_given_and_bad_shapes():
    with pytest.raises(ValueError, match="nothing to generate"):
        masked_mse(torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 1, 2, 1, 1), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[2, 4\]"):
        RectifiedFlow().loss_at(lambda x, t: x, randn(2, 3, 4, 2, 2), randn(2, 3, 4, 2, 2), torch.ones(2), MASK[:, :3])


# ---------------------------------------------------------------- samplers keep given frames
@pytest.mark.parametrize("objective", [RectifiedFlow(num_sampling_steps=4), RectifiedFlow(prediction="sample", num_sampling_steps=4),
                                       DDPM(sampler="ddim", num_sampling_steps=4), DDPM(sampler="dpm_solver", num_sampling_steps=4)],
                         ids=["flow", "flow-x0", "ddim", "dpm"])
def test_samplers_keep_given_frames_clean_at_every_step(objective):
    given = randn(2, 3, 4, 2, 2, seed=7)
    calls = []

    def fn(x, t, **cond):
        calls.append((x.clone(), t.clone()))
        return torch.tanh(x) * 0.3 + cond["offset"]

    out = objective.sample(fn, randn(2, 3, 4, 2, 2, seed=8), x_given=given, frame_mask=MASK, offset=0.1)
    m = MASK[:, None, :, None, None].expand_as(given)
    assert torch.equal(out[m], given[m])
    assert not torch.allclose(out[~m], given[~m])
    for x, t in calls:
        assert torch.equal(x[m], given[m]) and t.shape == (2, 4)
        assert (t[MASK] == 0).all() and (t[~MASK] == t[~MASK][0]).all()  # one step time on generated frames
    assert (calls[0][1][~MASK] > 0).all()


def test_sampler_needs_clean_latents_with_a_mask():
    with pytest.raises(ValueError, match="x_given"):
        RectifiedFlow().sample(lambda x, t: x, randn(2, 3, 4, 2, 2), 2, frame_mask=MASK)


# ---------------------------------------------------------------- the DiT's per-frame timesteps
def _dit(**kw):
    torch.manual_seed(0)
    dit = DiT(in_channels=3, hidden_size=32, depth=2, num_heads=2, context_dim=8, **kw).double()
    with torch.no_grad():  # off the identity init so every weight matters
        for p in dit.parameters():
            p.normal_(0.0, 0.2)
    return dit


DIT_VARIANTS = {
    "adaln": dict(conditioning="adaln", patch_size=(1, 2, 2)),
    "cross": dict(conditioning="cross_attn", patch_size=(1, 2, 2)),
    "cross-single-st": dict(conditioning="cross_attn", adaln_single=True, layout="spatial_temporal", patch_size=(1, 2, 2)),
    "adaln-single-st": dict(conditioning="adaln", adaln_single=True, layout="spatial_temporal", patch_size=(1, 2, 2)),
}


@pytest.mark.parametrize("variant", list(DIT_VARIANTS))
def test_dit_per_frame_timesteps(variant):
    """Reference: with the temporal attention silenced every frame is computed alone, so frame
    f under per-frame times equals frame f of the model run with time t_f everywhere."""
    kw = DIT_VARIANTS[variant]
    dit = _dit(**kw)
    x, ctx = randn(2, 3, 4, 4, 4, seed=1, dtype=torch.float64), randn(2, 5, 8, seed=2, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2:] = False
    t = torch.tensor([300.0, 800.0], dtype=torch.float64)
    # a constant per-frame time is the per-sample time
    torch.testing.assert_close(dit(x, t[:, None].expand(2, 4), ctx, mask), dit(x, t, ctx, mask))
    if kw.get("layout") != "spatial_temporal":
        return
    with torch.no_grad():
        dit.blocks[0].attns[1].proj.weight.zero_(), dit.blocks[0].attns[1].proj.bias.zero_()
        dit.blocks[1].attns[1].proj.weight.zero_(), dit.blocks[1].attns[1].proj.bias.zero_()
    times = torch.tensor([[0.0, 250.0, 500.0, 999.0], [999.0, 0.0, 10.0, 600.0]], dtype=torch.float64)
    out = dit(x, times, ctx, mask)
    for f in range(4):
        ref = dit(x, times[:, f], ctx, mask)
        torch.testing.assert_close(out[:, :, f], ref[:, :, f])
    assert not torch.allclose(out[:, :, 0], dit(x, times[:, 1], ctx, mask)[:, :, 0]), "time must matter"


def test_dit_temporal_patch_takes_its_noisiest_frame():
    dit = _dit(conditioning="adaln", patch_size=(2, 2, 2))
    x, ctx = randn(1, 3, 4, 4, 4, seed=1, dtype=torch.float64), randn(1, 5, 8, seed=2, dtype=torch.float64)
    per_frame = dit(x, torch.tensor([[0.0, 700.0, 700.0, 700.0]], dtype=torch.float64), ctx)
    torch.testing.assert_close(per_frame, dit(x, torch.tensor([700.0], dtype=torch.float64), ctx))


def test_dit_per_frame_timesteps_clear_errors():
    dit = _dit(conditioning="adaln", patch_size=(1, 2, 2))
    x = randn(2, 3, 4, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[2, 4\]"):
        dit(x, torch.zeros(2, 3, dtype=torch.float64), randn(2, 5, 8, dtype=torch.float64))
    in_context = _dit(conditioning="in_context", patch_size=(1, 2, 2))
    with pytest.raises(ValueError, match="in_context"):
        in_context(x, torch.zeros(2, 4, dtype=torch.float64), randn(2, 5, 8, dtype=torch.float64))


def test_guidance_with_per_frame_timesteps_and_a_masked_sampler():
    """Classifier-free guidance passes per-frame times; given frames stay exact through it."""
    dit = _dit(conditioning="cross_attn", patch_size=(1, 2, 2)).float()
    ctx, null = randn(2, 5, 8, seed=3), torch.zeros(1, 1, 8)
    guided = GuidedDenoiser(dit, ctx, torch.ones(2, 5, dtype=torch.bool), null, torch.ones(1, 1, dtype=torch.bool), 3.0)
    x, times = randn(2, 3, 4, 4, 4, seed=4), frame_timesteps(torch.tensor([500.0, 900.0]), MASK)
    with torch.no_grad():
        cond = dit(x, times, ctx, torch.ones(2, 5, dtype=torch.bool))
        uncond = dit(x, times, null.expand(2, 1, 8), torch.ones(2, 1, dtype=torch.bool))
        torch.testing.assert_close(guided(x, times), uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    given = randn(2, 3, 4, 4, 4, seed=5)
    out = RectifiedFlow(num_sampling_steps=3).sample(guided, randn(2, 3, 4, 4, 4, seed=6), x_given=given, frame_mask=MASK)
    assert torch.equal(out[:, :, 0], given[:, :, 0]) and torch.equal(out[1, :, 3], given[1, :, 3])
