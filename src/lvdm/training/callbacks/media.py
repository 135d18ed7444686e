"""Videos and text to the run's loggers: TensorBoard (the default) and Weights & Biases.

The callbacks that write mp4s (:class:`~lvdm.training.callbacks.preview.SamplePreview`,
:class:`~lvdm.training.callbacks.evaluation.PeriodicEvaluation`) also hand their videos to every
active logger through :func:`log_videos`, so a run's samples are next to its loss curves.
Loggers of other kinds are skipped: the mp4 files are always written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

__all__ = ["gif_bytes", "log_videos", "log_text", "SaveRecipe"]


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """``[T, H, W, 3]`` uint8 frames → an animated GIF (what TensorBoard's image tab plays)."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    return buffer.getvalue()


def _uint8_frames(videos: torch.Tensor) -> np.ndarray:
    """``[B, 3, T, H, W]`` in [-1, 1] → ``[B, T, H, W, 3]`` uint8."""
    frames = ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).cpu().numpy()


def _tensorboard_videos(logger: TensorBoardLogger, key: str, frames: np.ndarray, fps: float, step: int) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    # SummaryWriter.add_video needs moviepy for the same GIF; Pillow (already installed) makes it.
    values = [
        Summary.Value(tag=f"{key}/{i}", image=Summary.Image(
            height=clip.shape[1], width=clip.shape[2], colorspace=3, encoded_image_string=gif_bytes(clip, fps)))
        for i, clip in enumerate(frames)
    ]
    writer = logger.experiment._get_file_writer()  # the writer add_video itself uses
    writer.add_summary(Summary(value=values), global_step=step)
    writer.flush()


def log_videos(
    trainer: L.Trainer, key: str, videos: torch.Tensor, paths: Sequence[str | Path], captions: Sequence[str],
    fps: float,
) -> None:
    """Log ``videos`` ``[B, 3, T, H, W]`` in [-1, 1] (already written as the mp4 files ``paths``)
    under ``key`` at the current step: TensorBoard gets animated GIFs (``key/0``, ``key/1``…),
    W&B the mp4 files with their captions. Call it on rank zero."""
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_videos(logger, key, _uint8_frames(videos), fps, step)
        elif isinstance(logger, WandbLogger):
            logger.log_video(key, videos=[str(p) for p in paths], step=step, caption=list(captions))


def log_text(trainer: L.Trainer, key: str, text: str) -> None:
    """Log ``text`` (shown as Markdown) under ``key`` to TensorBoard and W&B. Call it on rank zero."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, text, global_step=trainer.global_step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key, columns=["text"], data=[[text]], step=trainer.global_step)


class SaveRecipe(SaveConfigCallback):
    """Lightning CLI's ``config.yaml`` in the log dir, and the same resolved recipe logged once
    as text (``recipe``) to the run's loggers (the hyper-parameters are logged by Lightning)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        recipe = self.parser.dump(self.config, skip_none=False)
        # four-space indentation: TensorBoard renders text as Markdown, this keeps it a code block
        log_text(trainer, "recipe", "\n".join("    " + line for line in recipe.splitlines()))
