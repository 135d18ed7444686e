"""Write sample videos during training, so a run can be watched as it learns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from lvdm.callbacks.ema import EMA
from lvdm.sampling import save_videos


class SamplePreview(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training), generate one
    video per prompt and write them as mp4 to ``<log_dir>/samples/step_<N>/`` (or
    ``<dirpath>/step_<N>/``).
    Uses the EMA weights when an :class:`~lvdm.callbacks.ema.EMA` callback is present.

    Args:
        prompts: captions to render.
        every_n_steps: how often to sample (0: only at the end of training).
        num_steps: sampler steps (default: the objective's).
        guidance_scale: classifier-free guidance scale (default: the module's).
        seed: noise seed (fixed, so previews of different steps are comparable).
        fps: frame rate of the written mp4s.
        dirpath: output folder (default: ``samples/`` in the trainer's log dir, else root dir).
    """

    def __init__(
        self,
        prompts: Sequence[str] = ("a red square moving left",),
        every_n_steps: int = 500,
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        seed: int = 0,
        fps: int = 8,
        dirpath: Optional[str] = None,
    ):
        self.prompts = list(prompts)
        self.every_n_steps = every_n_steps
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.fps = fps
        self.dirpath = dirpath
        self.written: list[Path] = []
        self._last_step = -1

    def _root(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    @rank_zero_only
    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        was_training = pl_module.training
        pl_module.eval()
        try:
            if ema is not None:
                with ema.averaged_weights(pl_module):
                    videos = self._generate(pl_module)
            else:
                videos = self._generate(pl_module)
        finally:
            pl_module.train(was_training)
        out = self._root(trainer) / f"step_{trainer.global_step:07d}"
        self.written.extend(save_videos(videos, self.prompts, out, fps=self.fps))

    def _generate(self, pl_module):
        return pl_module.generate(
            self.prompts, num_steps=self.num_steps, guidance_scale=self.guidance_scale, seed=self.seed
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step  # with gradient accumulation several batches share a step
            self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self._write(trainer, pl_module)
