"""Trainable video autoencoders (pure torch, no Lightning): a causal 3D KL-VAE, a video
VQ-VAE, a 3D PatchGAN discriminator and their losses. :class:`lvdm.training.autoencoder_module.AutoencoderModule`
trains them; :class:`lvdm.compressors.autoencoder.AutoencoderCompressor` uses a trained one."""

from lvdm.autoencoders.base import AutoencoderOutput, VideoAutoencoder, latent_frames
from lvdm.autoencoders.discriminator import PatchDiscriminator3D
from lvdm.autoencoders.vae import CausalVAE3D
from lvdm.autoencoders.vqvae import EMAVectorQuantizer, VideoVQVAE

__all__ = ["AutoencoderOutput", "CausalVAE3D", "EMAVectorQuantizer", "PatchDiscriminator3D", "VideoAutoencoder",
           "VideoVQVAE", "latent_frames"]
