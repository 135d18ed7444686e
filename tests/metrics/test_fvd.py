"""FVD against published reference values and independent float64 / scipy computations."""

import numpy as np
import pytest
import torch
from scipy import linalg

from lvdm.shapes.synthetic import ALL_COMBOS, render_clip
from lvdm.metrics.fvd import FrechetVideoDistance, frechet_distance, preprocess_videos, tf1_resize_bilinear


@pytest.fixture(scope="module")
def fvd():
    return FrechetVideoDistance()


def test_tensorflow_reference_zeros_vs_ones(monkeypatch):
    """common_metrics_on_video_quality, README section "Comparison with orginal Tensorflow FVD
    metric" (https://github.com/JunyaoHu/common_metrics_on_video_quality, calculate_fvd_tensorflow.py):
    the original TF FVD of 8 all-zero vs 8 all-one videos, [8, 30 frames, 3, 64, 64] in [0, 1]
    turned into uint8 by ``x * 255``, prints ``[fvd-tensorflow] [151.39244]``.

    Constant videos make the resize irrelevant and the covariances zero, so this checks the I3D,
    the feature layer and the input scaling. All 8 videos of a set are identical, so one I3D pass
    per set is repeated 8 times. Runs with the network cut: any connection attempt fails.
    """
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network access attempted during FVD")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fvd = FrechetVideoDistance()
    zeros = torch.zeros(1, 3, 30, 64, 64, dtype=torch.uint8)
    ones = torch.full((1, 3, 30, 64, 64), 255, dtype=torch.uint8)
    fvd.update(features=fvd.features(zeros).repeat(8, 1), real=True)
    fvd.update(features=fvd.features(ones).repeat(8, 1), real=False)
    assert fvd.counts == {"real": 8, "fake": 8}
    assert fvd.compute().item() == pytest.approx(151.39244, abs=0.01)


@pytest.mark.slow
def test_stylegan_v_reference_random_videos(fvd):
    """universome/fvd-comparison (StyleGAN-V's check against the TF implementation),
    compare_metrics.py + README: 128 videos of 16 frames at 224x224, uniform [0, 1] from
    ``np.random.RandomState(1)`` (one set) and ``RandomState(2)`` (the other), fed to the I3D
    as they are (no rescaling); README: "[FVD scores] Theirs: 10.13808536529541" (TF).

    256 I3D passes at 224x224x16: minutes on a CPU, hence slow; the fast zeros-vs-ones test
    covers the I3D and scaling, this one the covariance convention and the Fréchet distance.
    """
    fvd.reset()
    for seed, real in ((1, False), (2, True)):
        rng = np.random.RandomState(seed)  # drawn video by video: the same stream as one big rand()
        for _ in range(128 // 8):
            batch = np.stack([rng.rand(16, 224, 224, 3) for _ in range(8)]).astype(np.float32)
            fvd.update(torch.from_numpy(batch).permute(0, 4, 1, 2, 3), real=real)
    assert fvd.counts == {"real": 128, "fake": 128}
    assert fvd.compute().item() == pytest.approx(10.13808536529541, abs=0.01)


def test_statistics_are_mean_and_unbiased_covariance(fvd):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(30, 400)) * rng.uniform(0.5, 2, size=400) + 3
    fvd.reset()
    for chunk in np.array_split(real, 4):  # several updates of uneven sizes
        fvd.update(features=torch.from_numpy(chunk), real=True)
    fvd.update(features=torch.from_numpy(real[:5]), real=False)
    mu, sigma = fvd.statistics(real=True)
    assert np.allclose(mu.numpy(), real.mean(0), rtol=1e-12)
    assert np.allclose(sigma.numpy(), np.cov(real, rowvar=False), rtol=1e-9, atol=1e-12)
    assert fvd.compute().dtype == torch.float64


def test_frechet_distance_matches_scipy_sqrtm():
    """Against StyleGAN-V's formula (np.cov + scipy.linalg.sqrtm of the product), full rank."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 64)) * rng.uniform(0.5, 2, size=64) + 1
    b = rng.normal(size=(200, 64)) @ (np.eye(64) + 0.1 * rng.normal(size=(64, 64)))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    expected = float(np.real(diff @ diff + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2))))
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_properties():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 400))  # fewer samples than dimensions: singular covariances
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    # Rank-deficient: the null space's round-off (eigenvalues ~1e-15, square roots ~3e-8) leaves
    # an error ~1e-5 against a trace of ~800, as scipy.linalg.sqrtm does.
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-3)
    # Gaussians with commuting (diagonal) covariances have a closed form.
    d1, d2 = rng.uniform(0.1, 2, 400), rng.uniform(0.1, 2, 400)
    closed = ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum() + 4.0
    assert frechet_distance(np.zeros(400), np.diag(d1), np.full(400, 0.1), np.diag(d2)) == pytest.approx(closed)


def test_distributed_states_merge(fvd):
    """States are sums with dist_reduce_fx="sum": two ranks' metrics merged give the FVD of all."""
    rng = np.random.default_rng(2)
    feats = [torch.from_numpy(rng.normal(size=(n, 400))) for n in (5, 7, 6, 4)]
    fvd.reset()
    fvd.update(features=torch.cat(feats[:2]), real=True)
    fvd.update(features=torch.cat(feats[2:]), real=False)
    expected = fvd.compute().item()
    assert all(fvd._reductions[f"{s}_{k}"] is not None for s in ("real", "fake") for k in ("sum", "outer", "count"))
    rank0, rank1 = FrechetVideoDistance(), FrechetVideoDistance()
    rank0.update(features=feats[0], real=True)
    rank0.update(features=feats[2], real=False)
    rank1.update(features=feats[1], real=True)
    rank1.update(features=feats[3], real=False)
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(expected, rel=1e-6)


def test_tf1_resize_semantics():
    """TF1 resize_bilinear (no half-pixel centres): 2x upsampling keeps even outputs equal to the
    inputs, puts midpoints in between and repeats the last input at the edge."""
    x = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4) ** 2
    y = tf1_resize_bilinear(x, (6, 8))
    assert torch.equal(y[..., ::2, ::2], x)
    assert torch.allclose(y[..., 0, 1::2][..., :-1], (x[..., 0, :-1] + x[..., 0, 1:]) / 2)
    assert torch.equal(y[..., 0, -1], x[..., 0, -1])
    assert torch.equal(tf1_resize_bilinear(x, (3, 4)), x)
    # Downsampling 4 -> 3 samples source positions 0, 4/3, 8/3.
    row = tf1_resize_bilinear(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), (1, 3))
    assert torch.allclose(row, torch.tensor([[0.0, 4 / 3, 8 / 3]]))


def test_uint8_and_float_inputs_agree():
    video = torch.randint(0, 256, (1, 3, 9, 40, 50), dtype=torch.uint8)
    a = preprocess_videos(video)
    b = preprocess_videos(video.float() / 127.5 - 1)
    assert a.shape == (1, 3, 9, 224, 224)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # values in [-1, 1]
    assert a.min() >= -1 and a.max() <= 1


def test_bad_inputs_have_clear_errors(fvd):
    with pytest.raises(ValueError, match=r"in \[-1, 1\].*\[0, 255\]"):
        preprocess_videos(torch.full((2, 3, 16, 32, 32), 200.0))
    with pytest.raises(ValueError, match="at least 9 frames"):
        preprocess_videos(torch.zeros(2, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="channels last"):
        preprocess_videos(torch.zeros(2, 16, 32, 32, 3))
    with pytest.raises(ValueError, match="dtype"):
        preprocess_videos(torch.zeros(2, 3, 16, 32, 32, dtype=torch.int64))
    fvd.reset()
    fvd.update(features=torch.zeros(3, 400), real=True)
    fvd.update(features=torch.zeros(1, 400), real=False)
    with pytest.raises(ValueError, match="at least 2 fake videos.*got 1"):
        fvd.compute()


def test_shapes_real_vs_real_far_below_real_vs_noise(fvd):
    """Acceptance on the shapes world (9 frames, the I3D minimum, of 32x32;
    4 clips per set to keep the CPU cost low; the example runs 16 frames and more clips): two independent real
    sets are much closer than real videos and uniform noise."""
    rng = np.random.default_rng(0)

    def shapes(count: int) -> torch.Tensor:
        combos = [ALL_COMBOS[i] for i in rng.choice(len(ALL_COMBOS), count, replace=False)]
        clips = np.stack([render_clip(*c, rng, num_frames=9, size=32) for c in combos])
        return torch.from_numpy(clips).permute(0, 4, 1, 2, 3)

    real_a, real_b = fvd.features(shapes(4)), fvd.features(shapes(4))
    noise = fvd.features(torch.randint(0, 256, (4, 3, 9, 32, 32), dtype=torch.uint8))

    def distance(a, b):
        fvd.reset()
        fvd.update(features=a, real=True)
        fvd.update(features=b, real=False)
        return fvd.compute().item()

    real_real, real_noise = distance(real_a, real_b), distance(real_a, noise)
    print(f"shapes FVD: real vs real {real_real:.1f}, real vs noise {real_noise:.1f}")
    assert real_real * 5 < real_noise, (real_real, real_noise)
