"""``AutoencoderModule``: trains an lvdm video autoencoder (causal 3D VAE or VQ-VAE), with an
optional 3D PatchGAN discriminator (VQGAN recipe: adaptive weight, warm-up).

The autoencoder and discriminator are injected (pure torch, :mod:`lvdm.autoencoders`). Two
optimisers take turns on each batch, so the module uses Lightning's manual optimisation.
"""

from __future__ import annotations

import time
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_info

from lvdm.autoencoders.base import VideoAutoencoder
from lvdm.autoencoders.discriminator import PatchDiscriminator3D
from lvdm.autoencoders.losses import adaptive_weight, generator_loss, hinge_discriminator_loss, psnr

_PARTS = ("autoencoder", "discriminator", "optimizer", "discriminator_optimizer", "lr_scheduler")


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9))


class AutoencoderModule(L.LightningModule):
    """Reconstruction (L1, optional L2) + the autoencoder's own KL or VQ terms + an optional GAN.

    Each training batch is one generator step and, once the discriminator has started, one
    discriminator step. ``trainer.global_step`` therefore counts both optimisers' steps after
    ``gan_start`` (Lightning counts every optimiser step); the schedule here counts generator
    steps (``generator_steps``, stored in the checkpoint).

    Validation logs ``val/psnr`` and ``val/l1`` of deterministic reconstructions, the wall-clock
    minutes since training started (``val/train_minutes``), and keeps the
    per-channel mean and standard deviation of the latents (``latent_mean``, ``latent_std``,
    stored in the checkpoint), which :class:`lvdm.compressors.autoencoder.AutoencoderCompressor`
    uses as the latent normalisation.

    Args:
        autoencoder: the autoencoder to train (:class:`~lvdm.autoencoders.CausalVAE3D`,
            :class:`~lvdm.autoencoders.VideoVQVAE`).
        discriminator: optional PatchGAN; ``None`` trains on reconstruction terms alone.
        optimizer: optimiser factory of the autoencoder.
        discriminator_optimizer: optimiser factory of the discriminator.
        lr_scheduler: optional learning-rate schedule of the autoencoder's optimiser (e.g.
            :class:`lvdm.training.module.WarmupCosineLR`), stepped once per generator step, so its step
            counts are generator steps (equal to ``trainer.max_steps`` without a discriminator).
        l1_weight: weight of the L1 reconstruction loss.
        l2_weight: weight of the mean-squared reconstruction loss.
        gan_weight: weight of the generator's GAN loss (times the adaptive weight).
        gan_start: generator steps of reconstruction-only training before the GAN starts (the
            discriminator is not trained before either).
        gan_warmup: generator steps over which the GAN weight ramps linearly from 0 after ``gan_start``.
        adaptive_gan_weight: scale the GAN loss by VQGAN's gradient-norm ratio at the decoder's last layer.
        gradient_clip: clip each optimiser's gradient norm to this (``None``: no clipping);
            manual optimisation ignores ``trainer.gradient_clip_val``.
    """

    def __init__(
        self,
        autoencoder: VideoAutoencoder,
        discriminator: Optional[PatchDiscriminator3D] = None,
        optimizer: OptimizerCallable = _default_optimizer,
        discriminator_optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        gan_weight: float = 0.1,
        gan_start: int = 2000,
        gan_warmup: int = 500,
        adaptive_gan_weight: bool = True,
        gradient_clip: Optional[float] = 1.0,
    ):
        super().__init__()
        if _given_hyperparameters.get() is not None:  # built by the CLI: keep the recipe (see LatentDiffusionModule)
            self.save_hyperparameters()
        else:
            self.save_hyperparameters(ignore=list(_PARTS))
        self.automatic_optimization = False
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.optimizer_factory = optimizer
        self.discriminator_optimizer_factory = discriminator_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.l1_weight, self.l2_weight, self.gan_weight = l1_weight, l2_weight, gan_weight
        self.gan_start, self.gan_warmup, self.adaptive_gan_weight = gan_start, gan_warmup, adaptive_gan_weight
        self.gradient_clip = gradient_clip
        c = autoencoder.latent_channels
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        self._latent_sums: Optional[torch.Tensor] = None
        self._train_start: Optional[float] = None

    def setup(self, stage: str) -> None:
        """Fits the strategy to the two optimisers (before it wraps the module): the generator
        and discriminator steps each leave the other's parameters without gradients, which DDP
        must be told (it would stop at the first step otherwise); DeepSpeed takes one optimiser."""
        if self.discriminator is None or stage != "fit":
            return
        from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DeepSpeedStrategy):
            raise ValueError("AutoencoderModule with a discriminator needs two optimisers, and Lightning's "
                             "DeepSpeedStrategy takes one: train the GAN with --trainer.strategy ddp (or fsdp), "
                             "or set model.discriminator: null under DeepSpeed")
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            rank_zero_info("AutoencoderModule: DDP with find_unused_parameters=True (the generator and "
                           "discriminator steps each leave the other's parameters unused)")
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def gan_factor(self) -> float:
        """0 before ``gan_start``, then a linear ramp to 1 over ``gan_warmup`` generator steps."""
        if self.discriminator is None or self.gan_weight == 0:
            return 0.0
        done = int(self.generator_steps) - self.gan_start
        if done < 0:
            return 0.0
        return min(1.0, (done + 1) / self.gan_warmup) if self.gan_warmup > 0 else 1.0

    def reconstruction_loss(self, reconstruction: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        loss = self.l1_weight * (reconstruction - video).abs().mean()
        if self.l2_weight:
            loss = loss + self.l2_weight * F.mse_loss(reconstruction, video)
        return loss

    def _step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.gradient_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, (list, tuple)) else (optimizers, None)
        video = batch["video"]
        out = self.autoencoder(video)
        rec_loss = self.reconstruction_loss(out.reconstruction, video)
        loss = rec_loss + sum(out.losses.values())
        factor = self.gan_factor()
        logs = {"train/rec": rec_loss.detach(), **{f"train/{k}": v.detach() for k, v in out.losses.items()},
                **{f"train/{k}": v for k, v in out.stats.items()}}
        if factor > 0:
            self.discriminator.requires_grad_(False)  # the generator step leaves the discriminator's grads alone
            g_loss = generator_loss(self.discriminator(out.reconstruction))
            self.discriminator.requires_grad_(True)
            weight = adaptive_weight(rec_loss, g_loss, self.autoencoder.last_layer) if self.adaptive_gan_weight else 1.0
            loss = loss + factor * self.gan_weight * weight * g_loss
            logs.update({"train/g_loss": g_loss.detach(), "train/gan_adaptive_weight": torch.as_tensor(weight)})
        self._step(opt_g, loss)
        if self.lr_scheduler_factory is not None:
            self.lr_schedulers().step()
            logs["train/lr"] = torch.as_tensor(opt_g.param_groups[0]["lr"])
        if factor > 0:
            d_loss = hinge_discriminator_loss(self.discriminator(video), self.discriminator(out.reconstruction.detach()))
            self._step(opt_d, d_loss)
            logs["train/d_loss"] = d_loss.detach()
        self.generator_steps += 1
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=False, batch_size=len(video))
        self.log("train/psnr", psnr(out.reconstruction.detach(), video).mean(), prog_bar=True, batch_size=len(video))
        return loss.detach()

    # ------------------------------------------------------------------ evaluation
    def on_train_start(self) -> None:
        self._train_start = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._latent_sums = None

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic ``(latent, reconstruction)`` of ``video`` (posterior mean / nearest codes)."""
        latent = self.autoencoder.encode(video)
        return latent, self.autoencoder.decode(latent)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        video = batch["video"]
        latent, rec = self.reconstruct(video)
        self.log("val/psnr", psnr(rec, video).mean(), prog_bar=True, sync_dist=True, batch_size=len(video))
        self.log("val/l1", (rec.clamp(-1, 1) - video).abs().mean(), sync_dist=True, batch_size=len(video))
        flat = latent.transpose(0, 1).flatten(1).double()  # [c, N]
        sums = torch.stack([flat.new_full((flat.shape[0],), flat.shape[1]), flat.sum(1), flat.square().sum(1)])
        self._latent_sums = sums if self._latent_sums is None else self._latent_sums + sums

    def on_validation_epoch_end(self) -> None:
        if self._latent_sums is None or self.trainer.sanity_checking:
            return
        if self._train_start is not None:  # PSNR against wall-clock training time (validation included)
            self.log("val/train_minutes", (time.perf_counter() - self._train_start) / 60, sync_dist=True)
        sums = self.trainer.strategy.reduce(self._latent_sums, reduce_op="sum")
        count, total, squares = sums
        mean = total / count
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_((squares / count - mean.square()).clamp_min(1e-12).sqrt().float())

    def configure_optimizers(self):
        opt_g = self.optimizer_factory([p for p in self.autoencoder.parameters() if p.requires_grad])
        optimizers = [opt_g]
        if self.discriminator is not None:
            optimizers.append(self.discriminator_optimizer_factory(list(self.discriminator.parameters())))
        if self.lr_scheduler_factory is None:
            return optimizers[0] if len(optimizers) == 1 else optimizers
        return optimizers, [self.lr_scheduler_factory(opt_g)]
