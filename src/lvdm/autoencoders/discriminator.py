"""3D PatchGAN discriminator: real/fake logits for overlapping space-time patches."""

from __future__ import annotations

import torch
from torch import nn

from lvdm.autoencoders.layers import group_count


class PatchDiscriminator3D(nn.Module):
    """A PatchGAN (pix2pix) over video: ``num_layers`` stride-2 spatial convolutions with
    kernel ``(3, 4, 4)`` (time kept, so any clip length works, including one frame), GroupNorm
    (batch statistics would couple real and fake batches and ranks), LeakyReLU, and a final
    convolution to one logit per patch.

    Args:
        in_channels: channels of the video.
        base_channels: width of the first layer (doubled per layer, at most 8×).
        num_layers: stride-2 layers; the patch is about ``2**(num_layers + 2)`` pixels wide.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(in_channels, base_channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        width = base_channels
        for i in range(1, num_layers):
            out = base_channels * min(2**i, 8)
            layers += [nn.Conv3d(width, out, (3, 4, 4), (1, 2, 2), (1, 1, 1), bias=False), nn.GroupNorm(group_count(out), out),
                       nn.LeakyReLU(0.2)]
            width = out
        layers += [nn.Conv3d(width, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, C, T, H, W]`` → logits ``[B, 1, T, h, w]``."""
        return self.net(video)
