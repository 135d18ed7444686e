"""``LatentDiffusionModule``: the LightningModule that composes the parts of a video DiT.

It owns no distributed code and builds nothing by name: the denoiser, compressor, text
encoder and objective are injected (by the CLI from a recipe's ``class_path`` entries, or by
hand in Python).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from lvdm.compressors.base import Compressor
from lvdm.compressors.pixels import PixelCompressor
from lvdm.text.identity import check_identity, identity
from lvdm.diffusion.guidance import (ClassGuidedDenoiser, GuidanceSchedule, GuidedDenoiser, check_guidance_scale,
                                    pad_tokens)
from lvdm.diffusion.masking import FrameMasks
from lvdm.diffusion.objectives import Objective, RectifiedFlow
from lvdm.diffusion.cache_calibration import Calibration
from lvdm.diffusion.step_cache import cached_steps, resolve
from lvdm.models.contract import IMAGE_FPS, image_condition_kwargs, micro_condition_kwargs
from lvdm.text.base import TextEncoder


NullCaption = Literal["empty_caption", "learned_caption"]

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
        guidance_scale: default classifier-free guidance scale for sampling, ``>= 0``: the
            prediction is ``u + scale · (c − u)``, so 1 is the conditional prediction alone (no
            guidance), 0 the unconditional one, and larger values follow the prompt more closely.
        sample_shape: default (frames, height, width) of generated videos.
        frame_masks: masked-frame conditioning in training (Open-Sora 1.1+): the mix of
            image-to-video, continuation, loop and random masks (``lvdm.diffusion.masking``);
            None trains text-to-video only. Needed for ``generate(first_frames=...)`` and
            ``extend``.
        fps: frame rate of the training clips: the rate generated videos are written at, and
            the fps micro-condition of a video when neither the batch nor ``generate`` gives one.
        null_caption: what the unconditional half of text guidance sees when ``generate`` /
            ``extend`` are not told: ``empty_caption`` (the text encoder's "") or
            ``learned_caption`` (the denoiser's ``null_context``, Open-Sora's and PixArt-α's
            ``y_embedding``).

    ``negative_prompt`` (an attribute, None unless :meth:`use_sampler_defaults` sets a preset's,
    e.g. Wan's) is the caption the unconditional half of text guidance sees when ``generate`` /
    ``extend`` are not told.

    Micro-conditions: the denoiser receives those it declares (``micro_conditions`` of the
    backbone contract): ``fps``, ``resolution`` (pixel ``(h, w)``) and ``aspect_ratio``
    (``h / w``), from the batch's ``fps`` / ``height`` / ``width`` in training and from the
    requested size and fps in :meth:`generate`; an image (one frame) has fps
    :data:`~lvdm.models.contract.IMAGE_FPS` (120, Open-Sora's rule).

    ``step_cache_calibration`` (an attribute, None unless :func:`lvdm.checkpoints.load.load_module`
    found the checkpoint's ``.step_cache.json``) gives step caching its rescaling polynomial and
    the ``"calibrated"`` thresholds (:mod:`lvdm.diffusion.cache_calibration`).
    """

    step_cache_calibration: Optional[Calibration] = None

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
        frame_masks: Optional[FrameMasks] = None,
        fps: float = 8.0,
        null_caption: NullCaption = "empty_caption",
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
        self.frame_masks = frame_masks
        if fps <= 0:
            raise ValueError(f"fps must be positive; got {fps}")
        self.fps = fps
        if null_caption not in ("empty_caption", "learned_caption"):
            raise ValueError(f"LatentDiffusionModule.null_caption must be empty_caption or learned_caption, got {null_caption!r}")
        self.null_caption = null_caption
        self.negative_prompt: Optional[str] = None
        ctx_dim = getattr(denoiser, "context_dim", None)
        if ctx_dim is not None and ctx_dim != text_encoder.dim and not getattr(denoiser, "num_classes", 0):
            raise ValueError(
                f"denoiser.context_dim ({ctx_dim}) must equal text_encoder.dim ({text_encoder.dim})"
            )
        self._check_sample_shape()
        check_guidance_scale(guidance_scale, "LatentDiffusionModule.guidance_scale")
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
            from lvdm.distributed.ranks import seed_data_parallel_replica

            seed_data_parallel_replica(self.trainer)

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (``strategies/fsdp2.yaml``), shard with FSDP2:
        one unit per backbone block, then each part (:func:`lvdm.distributed.fsdp2.shard_module`).
        Runs after the callbacks' ``setup`` (LoRA adapters, activation checkpointing are in place);
        other strategies wrap the model themselves."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if isinstance(getattr(self._trainer, "strategy", None), ModelParallelStrategy):
            from lvdm.distributed.fsdp2 import data_parallel_mesh, shard_module

            shard_module(self, data_parallel_mesh(self.trainer.strategy))

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # noise, timesteps and caption dropout follow from (seed, rank, batch count), so a
        # resumed run draws what the uninterrupted one drew
        from lvdm.distributed.ranks import seed_training_batch

        seed_training_batch(self.trainer)

    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ctx, mask = self.text_encoder(list(captions))
        return ctx.to(self.device), mask.to(self.device)

    def caption_keep(self, count: int) -> torch.Tensor:
        """Which of ``count`` captions survive caption dropout (all outside training)."""
        if not self.training or self.caption_dropout <= 0:
            return torch.ones(count, dtype=torch.bool)
        return torch.rand(count) >= self.caption_dropout

    def drop_captions(self, captions: Sequence[str]) -> list[str]:
        keep = self.caption_keep(len(captions))
        return [c if k else "" for c, k in zip(captions, keep.tolist())]

    def text_identity(self) -> str:
        """:func:`lvdm.text.identity.identity` of the (frozen) text encoder, computed once."""
        if "_text_identity" not in self.__dict__:
            self._text_identity = identity(self.text_encoder)
        return self._text_identity

    def text_condition(self, batch: dict, pooled: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption tokens and mask of a batch, after caption dropout: the cached embeddings
        (``text``, ``text_mask`` from ``lvdm data encode --text_encoder``), else the text
        encoder's. A dropped caption becomes the empty caption's tokens, or with
        ``null_caption="learned_caption"`` the denoiser's learned null caption under the dropped
        caption's own mask (Open-Sora's and PixArt-α's caption dropout). ``pooled``: a dict that
        receives the ``pooled_text`` micro-condition of the captions after dropout, a dropped one
        pooled as "" (:meth:`pooled_of`; nothing when the batch has no captions)."""
        learned = self.null_caption == "learned_caption"
        if "text" not in batch and not learned:
            captions = self.drop_captions(batch["caption"])
            if pooled is not None:
                pooled.update(self.pooled_of(captions))
            return self.encode_text(captions)
        if "text" in batch:
            check_identity(batch.get("text_encoder_identity"), self.text_identity(), "text encoder", batch.get("key"))
            ctx, mask = batch["text"].to(self.device), batch["text_mask"].to(self.device)
        else:
            ctx, mask = self.encode_text(batch["caption"])
        keep = self.caption_keep(len(ctx)).to(self.device)
        if pooled is not None and "caption" in batch:
            pooled.update(self.pooled_of([c if k else "" for c, k in zip(batch["caption"], keep.tolist())]))
        if keep.all():
            return ctx, mask
        if learned:
            null_ctx, null_mask = self.learned_null(mask)
            length = max(ctx.shape[1], null_ctx.shape[1])
            (ctx, mask), (null_ctx, null_mask) = pad_tokens(ctx, mask, length), pad_tokens(null_ctx, null_mask, length)
        else:
            if "_null_text" not in self.__dict__:  # the encoder is frozen: "" encodes once
                self._null_text = self.encode_text([""])
            null_ctx, null_mask = self._null_text
        ctx = torch.where(keep[:, None, None], ctx, null_ctx.to(ctx.dtype))
        return ctx, torch.where(keep[:, None], mask, null_mask)

    def learned_null(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's learned null caption (``null_context``: PixArt-α's and Open-Sora's
        ``y_embedding``), one row per caption, each under that caption's mask cut or padded to
        the null caption's length: Open-Sora repeats the prompts' mask over the null rows (in
        guidance and in caption dropout), so a null row sees as many tokens as its prompt."""
        null = getattr(self.denoiser, "null_context", None)
        if null is None:
            raise ValueError("null_caption='learned_caption' needs a denoiser with a learned null caption "
                             "(STDiT with context_length > 0)")
        length = null.shape[0]
        null_mask = F.pad(mask.bool(), (0, max(0, length - mask.shape[1])), value=False)[:, :length]
        return null[None].expand(len(mask), -1, -1).to(self.device), null_mask

    def latents(self, batch: dict) -> torch.Tensor:
        """The normalised latents of a batch: its precomputed raw ``latent`` (LatentDataModule)
        normalised, or its ``video`` encoded by the compressor."""
        if "latent" in batch:
            return self.compressor.normalize(batch["latent"])
        return self.compressor.encode(batch["video"])

    def draw_frame_mask(self, latents: torch.Tensor) -> Optional[torch.Tensor]:
        """A training frame mask ``[B, T]`` from ``frame_masks`` (None when nothing is given)."""
        if self.frame_masks is None or not self.training:
            return None
        mask = self.frame_masks(latents.shape[0], latents.shape[2], device=latents.device)
        return mask if bool(mask.any()) else None

    def micro_conditions(self, batch_size: int, num_frames: int, height=None, width=None, fps=None) -> dict:
        """The denoiser's micro-condition keywords for ``batch_size`` clips of ``num_frames``
        frames and pixel ``height`` × ``width`` at ``fps`` (numbers or one per clip; sizes None:
        left to the model; fps None: ``IMAGE_FPS`` for one frame, else ``self.fps``)."""
        if fps is None:
            fps = IMAGE_FPS if num_frames == 1 else self.fps
        kwargs = micro_condition_kwargs(self.denoiser, batch_size, height, width, fps)
        return {k: v.to(self.device) for k, v in kwargs.items()}

    def batch_micro_conditions(self, batch: dict, latents: torch.Tensor) -> dict:
        """:meth:`micro_conditions` of a training batch from its ``fps``, ``height`` and
        ``width`` (what the data modules deliver), else from its ``video``'s size."""
        video = batch.get("video")
        height, width = batch.get("height"), batch.get("width")
        if height is None and video is not None:
            height, width = video.shape[-2:]
        frames = video.shape[2] if video is not None else latents.shape[2]
        return self.micro_conditions(len(latents), frames, height, width, batch.get("fps"))

    def diffusion_loss(self, batch: dict) -> torch.Tensor:
        latents = self.latents(batch)
        pooled: dict = {}
        ctx, mask = self.text_condition(batch, pooled)
        frame_mask = self.draw_frame_mask(latents)
        return self.objective.training_loss(
            self.denoiser, latents, frame_mask=frame_mask, context=ctx, context_mask=mask,
            **self.batch_micro_conditions(batch, latents), **pooled,
            **image_condition_kwargs(self.denoiser, latents, frame_mask),
        )

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
        """Defaults for what the trainer lacks: a :class:`~lvdm.training.callbacks.nonfinite.NonFiniteGuard`, so a
        NaN batch never spreads into the weights (``callbacks/nonfinite_guard.yaml`` configures
        it), and :class:`~lvdm.training.callbacks.data_health.DataHealth`, which logs skipped samples by reason;
        Lightning's model summary is replaced by one that counts the denoiser's FLOPs
        (:mod:`lvdm.training.callbacks.summary`)."""
        from lvdm.training.callbacks.data_health import DataHealth
        from lvdm.training.callbacks.nonfinite import NonFiniteGuard
        from lvdm.training.callbacks.summary import flops_summaries

        have = {type(c) for c in self.trainer.callbacks}
        defaults = [cls() for cls in (NonFiniteGuard, DataHealth) if not any(issubclass(h, cls) for h in have)]
        return defaults + flops_summaries(self.trainer.callbacks)

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
        first_frames: Optional[torch.Tensor] = None,
        loop: bool = False,
        class_labels: Optional[Sequence[int]] = None,
        null_caption: Optional[NullCaption] = None,
        fps: Optional[float] = None,
        guidance_schedule: Optional[GuidanceSchedule] = None,
        step_cache: Optional[float | str] = None,
        negative_prompt: Optional[str] = None,
        step_cache_mode: str = "teacache",
    ) -> torch.Tensor:
        """Generate one video per prompt: ``[B, 3, T, H, W]`` in [-1, 1].

        A class-conditional denoiser (``num_classes > 0``, e.g. ImageNet DiT) is conditioned on
        ``class_labels`` (one per prompt; the prompts then only count the videos), guided against
        its null label. ``null_caption`` is what the unconditional half of text guidance sees:
        the text encoder's "" or the denoiser's learned null caption (``null_context``:
        PixArt-α's and Open-Sora's ``y_embedding``); None: the module's ``null_caption``.
        ``negative_prompt``: the caption the unconditional half sees instead of "" (its text
        encoding, as diffusers' pipelines and Wan's sampler do; "" is the empty caption; None: the
        module's ``negative_prompt``); it cannot be combined with the learned null caption.
        ``guidance_schedule`` (:class:`lvdm.diffusion.guidance.GuidanceSchedule`) limits guidance
        to an interval of noise levels or combines the predictions by CFG-Zero* or APG; None:
        plain guidance at every step. ``step_cache`` (a threshold, e.g. 0.1, or ``"calibrated"``:
        the one in :attr:`step_cache_calibration`; 0 or None: off) skips the denoiser's block stack
        on steps that would change little, reusing the last computed residual
        (:mod:`lvdm.diffusion.step_cache`; ``step_cache_mode``: ``teacache``, on the first block's
        modulated input, rescaled by the calibration's polynomial when there is one, or
        ``first_block``, on the first block's residual): fewer block evaluations, a slightly different video.

        Micro-conditions come from the request: ``resolution`` / ``aspect_ratio`` from the
        pixel ``height`` × ``width``, ``fps`` from ``fps`` (None: the module's ``fps``), except
        that one frame is an image, conditioned on ``IMAGE_FPS`` (120) whatever ``fps`` says
        (Open-Sora 1.2's sampler).

        The noise of prompt ``i`` depends only on ``seed`` and ``i``, so a prompt's video does
        not change with the batch it is generated in.

        ``first_frames`` ``[B, 3, k, H, W]`` in [-1, 1] (one clip per prompt; ``k = 1``: an
        image) makes it image-to-video or continuation: their latents are given frames
        (``lvdm.diffusion.masking``), kept clean at every sampling step, so the video starts
        with them as the compressor reproduces them; the size follows them. ``loop`` also gives
        the first given latent frame as the last one, so the video ends where it starts (a
        seamless loop). The model should have been trained with ``frame_masks`` (``loop`` masks
        for looping).

        A ``height`` or ``width`` between two latent sizes is floored for the latents, as
        Open-Sora's VAE does (its 240p 9:16 is 240×426 px: latents 30×53, decoded 240×424),
        while the micro-conditions and a resolution-aware shift keep the requested size."""
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 (None: the objective's num_sampling_steps), got {num_steps}")
        resolve(step_cache, step_cache_mode, self.step_cache_calibration)
        scale = check_guidance_scale(self.guidance_scale if guidance_scale is None else guidance_scale, "guidance_scale")
        frames, h, w = num_frames or self.sample_shape[0], height or self.sample_shape[1], width or self.sample_shape[2]
        if first_frames is not None:
            h, w = first_frames.shape[-2:]
        s = self.compressor.spatial_downsample  # a size between latents is floored, as Open-Sora's VAE does
        shape = self.compressor.latent_shape(frames, h - h % s, w - w % s)
        noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(len(prompts))]
        ).to(self.device)
        if loop and first_frames is None:
            raise ValueError("loop=True needs first_frames: the image the video starts and ends with")
        x_given, frame_mask = (None, None) if first_frames is None else self.given_latents(first_frames, noise, loop)
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        model_fn = self.guided_denoiser(prompts, scale, class_labels, null_caption or self.null_caption,
                                        guidance_schedule, negative, x_given, frame_mask)
        cond = self.micro_conditions(len(prompts), frames, h, w, IMAGE_FPS if frames == 1 else fps)
        with cached_steps(self.denoiser, step_cache, self._model_calls(num_steps, guidance_schedule), step_cache_mode,
                          self.step_cache_calibration):
            latents = self.objective.sample(model_fn, noise, num_steps, progress=progress, x_given=x_given,
                                            frame_mask=frame_mask, latent_size=(shape[1], h / s, w / s), **cond)
        return self.compressor.decode(latents).clamp(-1, 1)

    def _model_calls(self, num_steps: Optional[int], schedule: Optional[GuidanceSchedule]) -> int:
        """Denoiser calls of one sampling run: one a step, less CFG-Zero*'s zero-init steps."""
        steps = num_steps or self.objective.num_sampling_steps
        return max(1, steps - (schedule.zero_init_steps if schedule is not None else 0))

    def use_sampler_defaults(self, defaults) -> None:
        """Sample the way a published model's source does: the objective, guidance scale, null
        caption, negative prompt and fps of ``defaults`` (:class:`lvdm.models.presets.SamplerDefaults`, e.g.
        ``from_name(name).sampler``), which :meth:`generate` and :meth:`extend` then use."""
        self.objective = defaults.build_objective()
        self.guidance_scale = check_guidance_scale(defaults.guidance_scale, "guidance_scale")
        if defaults.null_condition != "null_class":  # class guidance always uses the null label
            self.null_caption = defaults.null_condition
        self.negative_prompt = defaults.negative_prompt
        if defaults.fps is not None:
            self.fps = defaults.fps

    def guided_denoiser(self, prompts: Sequence[str], scale: float, class_labels: Optional[Sequence[int]] = None,
                        null_caption: NullCaption = "empty_caption", schedule: Optional[GuidanceSchedule] = None,
                        negative_prompt: Optional[str] = None, x_given: Optional[torch.Tensor] = None,
                        frame_mask: Optional[torch.Tensor] = None):
        """The guided ``model_fn`` of :meth:`generate`: on class labels, or on the prompts against
        the empty caption, the ``negative_prompt``'s encoding or the learned null caption;
        ``schedule`` as in :meth:`generate`. A denoiser with an ``image_condition`` gets the
        given frames ``x_given`` / ``frame_mask`` packed in the prompts' half and zeros in the
        unconditional half (Open-Sora 2.0's image guidance at the text guidance scale)."""
        if negative_prompt is not None and (class_labels is not None or null_caption == "learned_caption"):
            against = "class labels" if class_labels is not None else "null_caption='learned_caption'"
            raise ValueError(f"a negative prompt replaces the empty caption; it cannot be used with {against} "
                             "(use null_caption='empty_caption', or no negative prompt)")
        if class_labels is not None:
            if len(class_labels) != len(prompts):
                raise ValueError(f"give one class label per video: {len(class_labels)} labels, {len(prompts)} videos")
            labels = torch.tensor(list(class_labels), device=self.device)
            return ClassGuidedDenoiser(self.denoiser, labels, scale, schedule, self.objective)
        ctx, mask = self.encode_text(prompts)
        if null_caption == "learned_caption":
            null_ctx, null_mask = self.learned_null(mask)
            null_ctx = null_ctx.to(ctx.dtype)
        elif null_caption == "empty_caption":
            null_ctx, null_mask = self.encode_text(["" if negative_prompt is None else negative_prompt])
        else:
            raise ValueError(f"null_caption must be empty_caption or learned_caption, got {null_caption!r}")
        paired = self.pooled_text(prompts, "" if negative_prompt is None else negative_prompt)
        image = image_condition_kwargs(self.denoiser, x_given, frame_mask).get("image_condition")
        if image is not None:
            paired["image_condition"] = (image, torch.zeros_like(image))
        return GuidedDenoiser(self.denoiser, ctx, mask, null_ctx, null_mask, scale, schedule, self.objective, paired)

    def pooled_of(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"pooled_text": [B, dim]}`` of ``captions`` when the denoiser declares the ``pooled_text``
        micro-condition and the text encoder has a pooled output
        (:class:`~lvdm.text.pooled.PooledTextEncoder`); else ``{}`` (the denoiser's zeros)."""
        encode = getattr(self.text_encoder, "pooled_text", None)
        if encode is None or "pooled_text" not in getattr(self.denoiser, "micro_conditions", ()):
            return {}
        vectors = encode(list(captions))
        return {} if vectors is None else {"pooled_text": vectors.to(self.device)}

    def pooled_text(self, prompts: Sequence[str], null: str = "") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`pooled_of` the prompts paired with that of the ``null`` caption (guidance's two halves)."""
        ours, theirs = self.pooled_of(prompts), self.pooled_of([null])
        return {name: (vector, theirs[name]) for name, vector in ours.items()}

    def given_latents(self, first_frames: torch.Tensor, noise: torch.Tensor,
                      loop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean latents with ``first_frames`` encoded at the start (and, with ``loop``, the
        first of them again at the end), and the frame mask that marks them: the
        ``(x_given, frame_mask)`` of the samplers."""
        if first_frames.ndim != 5 or first_frames.shape[:2] != (noise.shape[0], 3):
            raise ValueError(f"first_frames must be [{noise.shape[0]} prompts, 3, frames, H, W] in [-1, 1], "
                             f"got {tuple(first_frames.shape)}")
        z = self.compressor.encode(first_frames.to(self.device, torch.float32))
        k, total = z.shape[2], noise.shape[2]
        if k + int(loop) >= total:
            raise ValueError(f"the {first_frames.shape[2]} given frames fill {k} of the video's {total} latent "
                             "frames: nothing is left to generate; ask for more frames")
        x_given = torch.zeros_like(noise)
        x_given[:, :, :k] = z.to(noise.dtype)
        frame_mask = torch.zeros(noise.shape[0], total, dtype=torch.bool, device=noise.device)
        frame_mask[:, :k] = True
        if loop:
            x_given[:, :, -1] = z[:, :, 0].to(noise.dtype)
            frame_mask[:, -1] = True
        return x_given, frame_mask

    @torch.no_grad()
    def extend(
        self,
        video: torch.Tensor,
        prompts: Sequence[str],
        num_new_frames: int,
        context_frames: Optional[int] = None,
        num_frames: Optional[int] = None,
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        seed: int = 0,
        progress: bool = False,
        null_caption: Optional[NullCaption] = None,
        fps: Optional[float] = None,
        guidance_schedule: Optional[GuidanceSchedule] = None,
        step_cache: Optional[float | str] = None,
        negative_prompt: Optional[str] = None,
        step_cache_mode: str = "teacache",
    ) -> torch.Tensor:
        """Continue ``video`` ``[B, 3, F, H, W]`` in [-1, 1] by ``num_new_frames`` frames:
        ``[B, 3, F + num_new_frames, H, W]`` whose first ``F`` frames are ``video`` itself.

        Windows of ``num_frames`` frames (default: the model's sample_shape) are generated one
        after another, each given the last ``context_frames`` frames so far (default: half a
        window) and adding the rest (Open-Sora's loop of conditioned generations). Guidance
        (``null_caption``, ``negative_prompt``, ``guidance_schedule``), ``step_cache`` /
        ``step_cache_mode`` and micro-conditions (``fps``) are those of :meth:`generate`."""
        window = num_frames or self.sample_shape[0]
        context = context_frames or max(1, window // 2)
        if not 0 < context < window:
            raise ValueError(f"context_frames must be in 1..{window - 1} (num_frames={window}), got {context}")
        if num_new_frames < 1:
            raise ValueError(f"num_new_frames must be at least 1, got {num_new_frames}")
        if video.ndim != 5 or video.shape[2] < 1:
            raise ValueError(f"video must be [B, 3, frames, H, W] with at least one frame, got {tuple(video.shape)}")
        out, target, rounds = video.to(self.device, torch.float32), video.shape[2] + num_new_frames, 0
        while out.shape[2] < target:
            given = out[:, :, -context:]
            clip = self.generate(prompts, window, num_steps=num_steps, guidance_scale=guidance_scale,
                                 seed=seed + 100_003 * rounds, progress=progress, first_frames=given,
                                 null_caption=null_caption, fps=fps, guidance_schedule=guidance_schedule,
                                 step_cache=step_cache, negative_prompt=negative_prompt,
                                 step_cache_mode=step_cache_mode)
            out = torch.cat([out, clip[:, :, given.shape[2]:]], dim=2)
            rounds += 1
        return out[:, :, :target]
