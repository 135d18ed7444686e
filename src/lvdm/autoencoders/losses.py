"""Autoencoder training losses: hinge GAN losses and the adaptive generator weight (VQGAN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``(E[relu(1 - D(real))] + E[relu(1 + D(fake))]) / 2``."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating hinge generator loss ``-E[D(fake)]``."""
    return -fake_logits.mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's (Esser et al. 2021, eq. 7) balance: ``||∇ L_rec|| / (||∇ L_gan|| + 1e-4)`` at the
    decoder's last layer, clamped to ``[0, max_weight]`` and detached, so the GAN gradient
    reaching the decoder is about as large as the reconstruction gradient."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def psnr(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each video (``[B, ...]`` → ``[B]``); ``data_range``
    2 for videos in [-1, 1]. Reconstructions are clamped to the range first."""
    lo = -data_range / 2
    mse = (reconstruction.clamp(lo, lo + data_range) - target).float().square().flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))
