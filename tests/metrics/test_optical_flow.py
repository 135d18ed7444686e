"""The model-free pyramidal Lucas–Kanade flow on known motions (lvdm.metrics.optical_flow)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvdm.metrics import vbench as vb
from lvdm.metrics.optical_flow import LucasKanadeFlow


def moving_square(frames: int = 8, size: int = 32, step: int = 3) -> np.ndarray:
    """A white 12x8 square on grey moving right by ``step`` pixels a frame: ``uint8 [T, H, W, 3]``."""
    video = np.full((frames, size, size, 3), 96, np.uint8)
    for t in range(frames):
        video[t, 8:20, 2 + step * t : 10 + step * t] = 255
    return video


def as_images(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float()


def texture(size: int = 64) -> torch.Tensor:
    """A smooth random colour texture ``[1, 3, size, size]`` in [0, 255]."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, size // 4, size // 4)))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 255).float()


def test_a_still_pair_has_exactly_zero_flow():
    images = as_images(moving_square(frames=1))
    flow = LucasKanadeFlow()(images, images)
    assert flow.shape == (1, 2, 32, 32) and torch.equal(flow, torch.zeros_like(flow))


@pytest.mark.parametrize("shift", [(2, -1), (-7, 2), (0, 5)])
def test_a_shifted_texture_gives_its_shift(shift):
    """A texture rolled by (dx, dy) pixels: away from the wrapped borders, the flow is (dx, dy)."""
    dx, dy = shift
    image = texture()
    flow = LucasKanadeFlow()(image, torch.roll(image, (dy, dx), dims=(-2, -1)))[0, :, 12:-12, 12:-12]
    error = (flow - torch.tensor([dx, dy], dtype=flow.dtype).view(2, 1, 1)).norm(dim=0)
    assert error.median() < 0.05
    assert error.quantile(0.9) < 0.25


@pytest.mark.parametrize("step", [2, 3, 5])
def test_a_translating_square_moves_by_its_pixels(step):
    """A flat square moving ``step`` pixels right: its flow is (step, 0), and the top-5% magnitude
    VBench thresholds is the displacement within 10% (the frame has 96 of 1024 pixels moving)."""
    images = as_images(moving_square(frames=2, step=step))
    flow = LucasKanadeFlow()(images[:1], images[1:])[0]
    on_square = flow[:, 8:20, 2 + step : 10 + step].mean(dim=(1, 2))
    assert on_square[0].item() == pytest.approx(step, rel=0.1)
    assert abs(on_square[1].item()) < 0.1
    assert vb.top_flow_magnitude(flow) == pytest.approx(step, rel=0.1)


def test_dynamic_degree_with_lucas_kanade_follows_the_threshold():
    """At 64x64 and 8 fps VBench's threshold is 1.5 px: a square moving 1 px a frame is not
    dynamic, one moving 2 px is; a still video is not."""
    flow = LucasKanadeFlow()
    assert vb.dynamic_thresholds(64, 64, 8, 8.0) == (1.5, 2)
    assert vb.dynamic_degree(np.repeat(moving_square(1, 64), 8, axis=0), 8.0, flow) is False
    assert vb.dynamic_degree(moving_square(size=64, step=1), 8.0, flow) is False
    assert vb.dynamic_degree(moving_square(size=64, step=2), 8.0, flow) is True


def test_bad_settings_fail_naming_them():
    with pytest.raises(ValueError, match="window must be an odd number"):
        LucasKanadeFlow(window=8)
    with pytest.raises(ValueError, match="levels and iters"):
        LucasKanadeFlow(iters=0)
