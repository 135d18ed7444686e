"""Video compressors: video ``[B, 3, T, H, W]`` ↔ latents ``[B, c, t, h, w]``."""

from lvdm.compressors.base import Compressor
from lvdm.compressors.pixels import PixelCompressor
from lvdm.compressors.vae2d import FrameVAECompressor

__all__ = ["Compressor", "FrameVAECompressor", "PixelCompressor"]
