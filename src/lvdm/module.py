"""``LatentDiffusionModule``: the LightningModule that composes the parts of a video DiT.

It owns no distributed code and builds nothing by name: the denoiser, compressor, text
encoder and objective are injected (by the CLI from a recipe's ``class_path`` entries, or by
hand in Python).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from lvdm.compressors.base import Compressor
from lvdm.compressors.pixels import PixelCompressor
from lvdm.diffusion.guidance import GuidedDenoiser
from lvdm.diffusion.objectives import Objective, RectifiedFlow
from lvdm.text.base import TextEncoder


_PARTS = ("denoiser", "text_encoder", "objective", "compressor", "optimizer", "lr_scheduler")


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_ratio`` of the peak at
    ``total_steps`` (constant after ``warmup_steps`` when ``total_steps`` is 0).

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        warmup_steps: steps of linear warm-up from 0.
        total_steps: step at which the cosine reaches ``min_ratio`` (0: no decay).
        min_ratio: final learning rate as a fraction of the peak.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, total_steps: int = 0, min_ratio: float = 0.0):
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            if total_steps <= warmup_steps:
                return 1.0
            progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        super().__init__(optimizer, factor)


class LatentDiffusionModule(L.LightningModule):
    """Text-to-video latent diffusion: compressor → DiT denoiser under an objective.

    Args:
        denoiser: the diffusion transformer, e.g. :class:`~lvdm.models.dit.DiT` or
            :class:`~lvdm.models.stdit.STDiT` (a function returning one, such as
            :func:`lvdm.models.presets.preset`, also works in a recipe; its ``context_dim`` must equal the text
            encoder's ``dim``).
        text_encoder: turns captions into token embeddings and a mask.
        objective: rectified flow or DDPM; also the sampler.
        compressor: video ↔ latent map (default: raw pixels).
        optimizer: optimizer factory (the CLI's ``optimizer:`` entry overrides it).
        lr_scheduler: optional learning-rate schedule factory, stepped every optimizer step.
        caption_dropout: probability of replacing a caption by "" in training, which teaches
            the unconditional prediction that classifier-free guidance needs.
        guidance_scale: default classifier-free guidance scale for sampling.
        sample_shape: default (frames, height, width) of generated videos.
        fps: frame rate of the training clips: the rate generated videos are written at.
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        text_encoder: TextEncoder,
        objective: Objective | None = None,
        compressor: Compressor | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        caption_dropout: float = 0.1,
        guidance_scale: float = 4.0,
        sample_shape: Sequence[int] = (8, 32, 32),
        fps: float = 8.0,
    ):
        super().__init__()
        # Under the lvdm CLI, Lightning hands over the recipe (class paths and arguments) and
        # `load_from_checkpoint` can rebuild the exact model from it. Built from Python, the
        # parts are objects, not config: keep only the plain values.
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters()
        else:
            self.save_hyperparameters(ignore=list(_PARTS))
        self.denoiser = denoiser
        self.text_encoder = text_encoder
        self.objective = objective or RectifiedFlow()
        self.compressor = compressor or PixelCompressor()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.caption_dropout = caption_dropout
        self.guidance_scale = guidance_scale
        self.sample_shape = tuple(sample_shape)
        if fps <= 0:
            raise ValueError(f"fps must be positive; got {fps}")
        self.fps = fps
        ctx_dim = getattr(denoiser, "context_dim", None)
        if ctx_dim is not None and ctx_dim != text_encoder.dim:
            raise ValueError(
                f"denoiser.context_dim ({ctx_dim}) must equal text_encoder.dim ({text_encoder.dim})"
            )
        self._check_sample_shape()
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"LatentDiffusionModule.caption_dropout must be in [0, 1], got {caption_dropout}")
        if denoiser.in_channels != self.compressor.latent_channels:
            raise ValueError(
                f"denoiser.in_channels ({denoiser.in_channels}) must equal the compressor's "
                f"latent_channels ({self.compressor.latent_channels})"
            )

    def _check_sample_shape(self) -> None:
        """``sample_shape`` must be 3 positive sizes whose latent grid the patch divides."""
        shape = self.sample_shape
        if len(shape) != 3 or any(int(n) < 1 for n in shape):
            raise ValueError(f"LatentDiffusionModule.sample_shape must be 3 positive sizes (frames, height, width), got {list(shape)}")
        try:
            grid = self.compressor.latent_shape(*shape)[1:]
        except ValueError as err:
            raise ValueError(f"LatentDiffusionModule.sample_shape {list(shape)}: {err}") from None
        patch = getattr(self.denoiser, "patch_size", None)
        if patch is not None and any(g % p for g, p in zip(grid, patch)):
            raise ValueError(
                f"LatentDiffusionModule.sample_shape {list(shape)} gives a latent grid (t, h, w) = {list(grid)} that "
                f"the denoiser's patch_size {list(patch)} does not divide"
            )

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:  # each data-parallel replica draws its own noise and timesteps
            from lvdm.distributed import seed_data_parallel_replica

            seed_data_parallel_replica(self.trainer)

    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ctx, mask = self.text_encoder(list(captions))
        return ctx.to(self.device), mask.to(self.device)

    def drop_captions(self, captions: Sequence[str]) -> list[str]:
        if not self.training or self.caption_dropout <= 0:
            return list(captions)
        keep = torch.rand(len(captions)) >= self.caption_dropout
        return [c if k else "" for c, k in zip(captions, keep.tolist())]

    def latents(self, batch: dict) -> torch.Tensor:
        """The normalised latents of a batch: its precomputed raw ``latent`` (LatentDataModule)
        normalised, or its ``video`` encoded by the compressor."""
        if "latent" in batch:
            return self.compressor.normalize(batch["latent"])
        return self.compressor.encode(batch["video"])

    def diffusion_loss(self, batch: dict) -> torch.Tensor:
        latents = self.latents(batch)
        ctx, mask = self.encode_text(self.drop_captions(batch["caption"]))
        return self.objective.training_loss(lambda x, t: self.denoiser(x, t, ctx, mask), latents)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["caption"]))
        return loss

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=len(batch["caption"]))
        return loss

    def configure_callbacks(self):
        """Defaults for what the trainer lacks: a :class:`~lvdm.callbacks.guard.NonFiniteGuard`, so a
        NaN batch never spreads into the weights (``callbacks/nonfinite_guard.yaml`` configures
        it), and :class:`~lvdm.callbacks.data.DataHealth`, which logs skipped samples by reason."""
        from lvdm.callbacks.data import DataHealth
        from lvdm.callbacks.guard import NonFiniteGuard

        have = {type(c) for c in self.trainer.callbacks}
        return [cls() for cls in (NonFiniteGuard, DataHealth) if not any(issubclass(h, cls) for h in have)]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        num_frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        seed: int = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate one video per prompt: ``[B, 3, T, H, W]`` in [-1, 1].

        The noise of prompt ``i`` depends only on ``seed`` and ``i``, so a prompt's video does
        not change with the batch it is generated in."""
        frames, h, w = num_frames or self.sample_shape[0], height or self.sample_shape[1], width or self.sample_shape[2]
        shape = self.compressor.latent_shape(frames, h, w)
        noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(len(prompts))]
        ).to(self.device)
        ctx, mask = self.encode_text(prompts)
        null_ctx, null_mask = self.encode_text([""])
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        model_fn = GuidedDenoiser(self.denoiser, ctx, mask, null_ctx, null_mask, scale)
        latents = self.objective.sample(model_fn, noise, num_steps, progress=progress)
        return self.compressor.decode(latents).clamp(-1, 1)
