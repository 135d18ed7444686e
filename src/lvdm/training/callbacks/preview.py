"""Write sample videos during training, so a run can be watched as it learns."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from lvdm.training.callbacks.ema import averaged_weights_if_any
from lvdm.training.callbacks.media import log_videos
from lvdm.training.callbacks.steps import EveryNSteps
from lvdm.generation import save_videos


class SamplePreview(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training), generate one
    video per prompt and write them as mp4 to ``<log_dir>/samples/step_<N>/`` (or
    ``<dirpath>/step_<N>/``), and log them to the run's loggers (``samples/<i>`` in
    TensorBoard's image tab, the mp4s in W&B).
    Uses the EMA weights when an :class:`~lvdm.training.callbacks.ema.EMA` callback is present.

    Args:
        prompts: captions to render.
        every_n_steps: how often to sample (0: only at the end of training).
        num_steps: sampler steps (default: the objective's).
        guidance_scale: classifier-free guidance scale (default: the module's).
        seed: noise seed (fixed, so previews of different steps are comparable).
        fps: frame rate of the written mp4s (default: the module's ``fps``).
        dirpath: output folder (default: ``samples/`` in the trainer's log dir, else root dir).
    """

    def __init__(
        self,
        prompts: Sequence[str] = ("a red square moving left",),
        every_n_steps: int = 500,
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        seed: int = 0,
        fps: Optional[float] = None,
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
        self._schedule = EveryNSteps(every_n_steps)

    def _root(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_on_rank_zero(trainer, pl_module, self._root(trainer))  # log_dir: every process asks

    @rank_zero_only
    def _write_on_rank_zero(self, trainer: L.Trainer, pl_module: L.LightningModule, root: Path) -> None:
        was_training = pl_module.training
        pl_module.eval()
        try:
            with averaged_weights_if_any(trainer, pl_module):
                videos = self._generate(pl_module)
        finally:
            pl_module.train(was_training)
        out = root / f"step_{trainer.global_step:07d}"
        fps = self.fps or getattr(pl_module, "fps", 8.0)
        paths = save_videos(videos, self.prompts, out, fps=fps)
        self.written.extend(paths)
        log_videos(trainer, "samples", videos, paths, self.prompts, fps)

    def _generate(self, pl_module):
        return pl_module.generate(
            self.prompts, num_steps=self.num_steps, guidance_scale=self.guidance_scale, seed=self.seed
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._schedule.due(trainer.global_step):
            self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._schedule.claim(trainer.global_step):
            self._write(trainer, pl_module)
