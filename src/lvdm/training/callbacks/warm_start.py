"""Recipe hook for :func:`lvdm.checkpoints.init_from.init_from`: start training from another model's weights."""

from __future__ import annotations

from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from lvdm.checkpoints.init_from import KeyReport, init_from


class InitFrom(Callback):
    """Load weights into a submodule before training starts (phase hand-off; weights only).

    Runs in ``setup``, before the strategy wraps the model (DeepSpeed, DDP) and before
    ``--ckpt_path`` restores a run, so resuming a phase continues from its own checkpoint.

    Args:
        source: an ``lvdm fit`` checkpoint (``.ckpt`` or DeepSpeed directory), an exported
            ``.safetensors``, a diffusers PixArt-α / Latte folder or hub id, or an Open-Sora /
            PixArt-α weights file.
        weights: ``ema``, ``raw`` or ``auto`` (EMA when the checkpoint has it).
        strict: require every key and shape to match (else copy the shared ones and report).
        module: the submodule of the LightningModule to load (``denoiser``; ``""`` loads the
            whole module, the text encoder's learned weights too).
        prefix: that submodule's prefix inside an lvdm checkpoint (``""`` with ``module: ""``).
        inflate_time: inflate an image DiT's patch embedding and output layer in time (image
            → tubelet video DiT, :mod:`lvdm.models.inflate`).
        allow_position_change: accept a source trained under other fixed position settings
            (e.g. another interpolation scale for a phase at another resolution); otherwise
            such a source is refused, naming the setting.
    """

    def __init__(self, source: str, weights: Literal["auto", "ema", "raw"] = "auto", strict: bool = False,
                 module: str = "denoiser", prefix: str = "denoiser.", inflate_time: bool = False,
                 allow_position_change: bool = False):
        self.source, self.weights, self.strict = source, weights, strict
        self.module, self.prefix, self.inflate_time = module, prefix, inflate_time
        self.allow_position_change = allow_position_change
        self.report: KeyReport | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.report is not None:
            return
        target = pl_module.get_submodule(self.module) if self.module else pl_module
        self.report = init_from(target, self.source, self.weights, self.strict, self.prefix, verbose=False,
                                inflate_time=self.inflate_time, allow_position_change=self.allow_position_change)
        rank_zero_only(print)(self.report.format(), flush=True)
