"""RectifiedFlow's target sign convention: lvdm's ε − x0 or Open-Sora 1.2's x0 − ε."""

import pytest
import torch

from lvdm.diffusion.objectives import RectifiedFlow


def _randn(seed, shape=(2, 3, 2, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _exact(x0, eps, sign):
    """A network that knows ``x0`` and ``ε`` and predicts ``sign · (ε − x0)``."""
    return lambda x_t, t: sign * (eps - x0)


@pytest.mark.parametrize("target, sign", [("eps_minus_x0", 1.0), ("x0_minus_eps", -1.0)])
def test_each_convention_has_zero_loss_under_its_own_option(target, sign):
    x0, eps = _randn(1), _randn(2)
    own = RectifiedFlow(target=target).training_loss(_exact(x0, eps, sign), x0, eps)
    other = "x0_minus_eps" if target == "eps_minus_x0" else "eps_minus_x0"
    wrong = RectifiedFlow(target=other).training_loss(_exact(x0, eps, sign), x0, eps)
    assert own.item() == 0.0
    torch.testing.assert_close(wrong, 4 * ((eps - x0) ** 2).mean())  # the sign mix-up the issue measured


def test_flipped_convention_with_flipped_model_samples_identical_latents():
    w = _randn(3, (3, 3))

    def model(x, t):  # any deterministic function of (x, t)
        return torch.einsum("ij,bj...->bi...", w, x) * torch.cos(t / 1000).view(-1, 1, 1, 1, 1)

    noise = _randn(4)
    ours = RectifiedFlow(shift=3.0, num_sampling_steps=6).sample(model, noise)
    flipped = RectifiedFlow(shift=3.0, num_sampling_steps=6, target="x0_minus_eps").sample(
        lambda x, t: -model(x, t), noise)
    assert torch.equal(ours, flipped)
    assert not torch.equal(ours, RectifiedFlow(shift=3.0, num_sampling_steps=6, target="x0_minus_eps").sample(
        model, noise))


def test_default_is_unchanged_and_bad_target_is_named():
    assert RectifiedFlow().target == "eps_minus_x0"
    with pytest.raises(ValueError, match="RectifiedFlow.target must be eps_minus_x0 or x0_minus_eps"):
        RectifiedFlow(target="x0-eps")
