"""``DistillationModule``: few-step distillation of a trained rectified-flow model (any backbone).

Guided trajectory distillation. The student samples with ``K`` Euler steps (its objective's
``num_sampling_steps``) on its objective's grid ``1 = t_0 > … > t_K = 0``, without guidance. For
each training batch, a frozen teacher (an ``lvdm fit`` checkpoint, loaded by
:func:`lvdm.checkpoints.load.load_module`) integrates the same grid from fresh noise with
``teacher_substeps`` Euler sub-steps per student step and classifier-free guidance folded in
(its own scale, null caption and objective: its sampler at ``K · teacher_substeps`` steps). The
rollout is computed once per batch and gives the student all ``K`` of its steps: at each grid
state ``x_i`` the student's conditional velocity regresses the jump
``(x_{i+1} − x_i) / (t_{i+1} − t_i)``, so one student step lands where the guided teacher's
sub-steps land. The student starts as a copy of the teacher (same recipe, the teacher's EMA
weights when it has them), only the student is trained, and the data give captions only.

The student's checkpoint is an ordinary :class:`~lvdm.training.module.LatentDiffusionModule`
checkpoint to every reader: ``lvdm sample`` rebuilds it without the teacher and samples at its
stored defaults, ``K`` steps and guidance 1.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lvdm.compressors.base import Compressor
from lvdm.diffusion.guidance import check_guidance_scale
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.text.base import TextEncoder
from lvdm.training.module import LatentDiffusionModule, NullCaption, _default_optimizer


class DistillationModule(LatentDiffusionModule):
    """A ``K``-step student distilled from a guided teacher (see the module docstring).

    Takes the arguments of :class:`~lvdm.training.module.LatentDiffusionModule` (the student's
    recipe: the teacher's parts, with the objective's ``num_sampling_steps`` set to ``K``; no
    ``frame_masks``: the distillation is text-to-video), and:

    Args:
        teacher: the teacher checkpoint (``.ckpt``, DeepSpeed directory or exported
            ``.safetensors``); read when fitting starts, never when the student is loaded
            (required for fitting).
        teacher_weights: ``auto`` (EMA when the checkpoint has it), ``ema`` or ``raw``.
        teacher_substeps: teacher Euler steps per student step.
        teacher_guidance: the teacher's guidance scale (None: the one stored with it).
        init_from_teacher: start the student from the teacher's weights (a resumed run then
            restores its own).
        guidance_scale: the student's sampling default: 1, no guidance (guidance is distilled in).
        caption_dropout: 0: the student learns the guided trajectories of the captions.
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        text_encoder: TextEncoder,
        objective: RectifiedFlow,
        compressor: Compressor | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        teacher: str = "",
        teacher_weights: Literal["auto", "ema", "raw"] = "auto",
        teacher_substeps: int = 4,
        teacher_guidance: Optional[float] = None,
        init_from_teacher: bool = True,
        guidance_scale: float = 1.0,
        caption_dropout: float = 0.0,
        sample_shape: Sequence[int] = (8, 32, 32),
        fps: float = 8.0,
        null_caption: NullCaption = "empty_caption",
    ):
        super().__init__(denoiser, text_encoder, objective, compressor, optimizer, lr_scheduler, caption_dropout,
                         guidance_scale, sample_shape, fps=fps, null_caption=null_caption)
        if not isinstance(self.objective, RectifiedFlow):
            raise ValueError(f"DistillationModule distils rectified flow; the objective is {type(self.objective).__name__}")
        if teacher_substeps < 1:
            raise ValueError(f"DistillationModule.teacher_substeps must be >= 1, got {teacher_substeps}")
        if teacher_weights not in ("auto", "ema", "raw"):
            raise ValueError(f"DistillationModule.teacher_weights must be auto, ema or raw, got {teacher_weights!r}")
        if teacher_guidance is not None:
            check_guidance_scale(teacher_guidance, "DistillationModule.teacher_guidance")
        self.teacher_path, self.teacher_weights = teacher, teacher_weights
        self.teacher_substeps, self.teacher_guidance = teacher_substeps, teacher_guidance
        self.init_from_teacher = init_from_teacher
        # not a submodule (set through __dict__): never saved, trained or moved with the student
        self.__dict__["_teacher"] = None

    @property
    def student_steps(self) -> int:
        """``K``: the student's sampling steps (its objective's ``num_sampling_steps``)."""
        return self.objective.num_sampling_steps

    # ------------------------------------------------------------------ the teacher
    def load_teacher(self) -> LatentDiffusionModule:
        """The frozen teacher, loaded once (:func:`lvdm.checkpoints.load.load_module`)."""
        if self._teacher is None:
            from lightning.pytorch.utilities import rank_zero_only

            from lvdm.checkpoints.load import load_module

            if not self.teacher_path:
                raise ValueError("DistillationModule.teacher is empty: give the teacher's checkpoint (an `lvdm fit` last.ckpt)")
            loaded = load_module(self.teacher_path, self.teacher_weights)
            if not isinstance(loaded.module, LatentDiffusionModule):
                raise ValueError(f"teacher {self.teacher_path!r} is a {type(loaded.module).__name__}, not a diffusion model")
            teacher = loaded.module.eval().requires_grad_(False)
            rank_zero_only(print)(f"distilling the teacher's {loaded.describe()}", flush=True)
            self.__dict__["_teacher"] = teacher
        return self._teacher

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # before --ckpt_path restores a resumed run's own weights
            self.start_from_teacher()

    def start_from_teacher(self) -> None:
        """Load the teacher and, with ``init_from_teacher``, copy its weights into the student
        (every key and shape must match: the student's recipe is the teacher's)."""
        teacher = self.load_teacher()
        if self.init_from_teacher:
            from lvdm.checkpoints.init_from import load_weights

            load_weights(self, teacher.state_dict(), strict=True, source=f"teacher {self.teacher_path!r}")

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def teacher_trajectory(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided teacher's states at the student's grid points, from fresh noise:
        ``([K + 1, B, C, T, H, W], grid [K + 1])``; noise drawn from the global generator (seeded per
        batch in training)."""
        teacher = self.load_teacher().to(self.device)
        frames, h, w = self.sample_shape
        x = torch.randn(len(captions), *self.compressor.latent_shape(frames, h, w), device=self.device)
        scale = teacher.guidance_scale if self.teacher_guidance is None else self.teacher_guidance
        model_fn = teacher.guided_denoiser(list(captions), scale, null_caption=teacher.null_caption,
                                           negative_prompt=teacher.negative_prompt)
        cond = teacher.micro_conditions(len(captions), frames, h, w)
        substeps = self.teacher_substeps
        grid = self.objective.timesteps(self.student_steps * substeps, x)
        states = [x]
        for j in range(len(grid) - 1):
            t = torch.full((len(x),), float(grid[j]), device=x.device)
            x = x + float(grid[j + 1] - grid[j]) * teacher.objective.velocity(model_fn, x, t, **cond).to(x.dtype)
            if (j + 1) % substeps == 0:
                states.append(x)
        return torch.stack(states), grid[::substeps]

    def distillation_loss(self, batch: dict) -> torch.Tensor:
        """Mean squared error between the student's velocity at each of the teacher's grid states
        and the jump to the next one, over all ``K`` steps of one rollout."""
        states, grid = self.teacher_trajectory(batch["caption"])
        steps, count = len(grid) - 1, states.shape[1]
        dt = (grid[1:] - grid[:-1]).to(states.dtype).to(self.device)
        target = (states[1:] - states[:-1]) / dt.view(-1, *([1] * (states.ndim - 1)))
        ctx, mask = self.text_condition(batch)
        t = grid[:-1].to(self.device, torch.float32).repeat_interleave(count)
        cond = self.micro_conditions(steps * count, *self.sample_shape)
        v = self.objective.velocity(self.denoiser, states[:-1].flatten(0, 1), t, context=ctx.repeat(steps, 1, 1),
                                    context_mask=mask.repeat(steps, 1), **cond)
        return F.mse_loss(v.float(), target.flatten(0, 1).float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.distillation_loss(batch)
        self.log("train/distill_loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.distillation_loss(batch)
        self.log("val/distill_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["caption"]))
        return loss
