"""Throughput and MFU of the denoiser during training, measured without per-step host syncs."""

from __future__ import annotations

import time
from typing import Any, Optional

import lightning as L
import torch

from lvdm.models.contract import Backbone
from lvdm.models.flops import patch_grid
from lvdm.perf.step_flops import dit_training_flops
from lvdm.perf.hardware import PEAKS, device_peak_flops, dtype_key


class ThroughputMonitor(L.Callback):
    """Logs training samples/s, video tokens/s, achieved TFLOP/s per device and MFU.

    FLOPs are the denoiser's analytic training FLOPs, from the FLOP model every backbone
    declares (``forward_flops``, :mod:`lvdm.models.contract`: DiT, STDiT…) (``3 × forward``, see
    :mod:`lvdm.perf.step_flops`) at the shapes it actually received: a forward pre-hook reads the
    latent grid, text length and batch size of each training call (shapes only, no data).
    Frozen parts (text encoder, VAE) and activation-checkpointing recompute are not counted:
    this is *model* FLOPs utilisation.

    Why not Lightning's ``ThroughputMonitor``: it calls ``torch.cuda.synchronize()`` after every
    batch, and its peak table lacks H800/L40S and lists H200 at its sparse peak. Here the GPU
    is synchronised once per ``window`` steps (at the window's ends only), so the measured time
    covers whole steps including the optimizer, and the step itself never waits for the host.

    Args:
        window: steps per measurement window (one metric row per window).
        device_kind: key of :data:`lvdm.perf.hardware.PEAKS` (``h100-sxm``…) to override the
            detected device; ``None`` detects it (no MFU on CPU or unknown devices).
        peak_flops: peak FLOP/s per device to use instead of the table.
        skip_first: steps ignored before the first window (warm-up, ``torch.compile``).
    """

    def __init__(
        self,
        window: int = 10,
        device_kind: Optional[str] = None,
        peak_flops: Optional[float] = None,
        skip_first: int = 1,
    ):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if device_kind is not None and device_kind not in PEAKS:
            raise ValueError(f"unknown device_kind {device_kind!r}; choose from {sorted(PEAKS)}")
        self.window = window
        self.device_kind = device_kind
        self.peak_flops = peak_flops
        self.skip_first = skip_first
        self.history: list[dict[str, float]] = []
        self._model: Optional[Backbone] = None
        self._flops: dict[tuple, int] = {}
        self._hook = None
        self._steps = 0
        self._mark: Optional[float] = None
        self._acc = {"samples": 0, "tokens": 0, "flops": 0}
        self._peak: Optional[float] = None
        self._in_window = 0

    # -- shapes of each training call of the denoiser ------------------------------------
    def _pre_hook(self, module, args, kwargs) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # sampling / validation
        x = args[0] if args else kwargs["x"]
        context = args[2] if len(args) > 2 else kwargs.get("context")
        b, _, t, h, w = x.shape
        text_len = context.shape[1] if context is not None else 0
        grid = patch_grid(self._model.patch_size, (t, h, w))
        self._acc["samples"] += b
        self._acc["tokens"] += b * grid[0] * grid[1] * grid[2]
        key = ((t, h, w), text_len, b)
        if key not in self._flops:  # called before every training forward: batches repeat a few shapes
            self._flops[key] = dit_training_flops(self._model, (t, h, w), text_len, batch_size=b)
        self._acc["flops"] += self._flops[key]

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        denoiser = getattr(pl_module, "denoiser", None)
        if denoiser is None:
            raise ValueError("ThroughputMonitor needs a module with a `denoiser` (an lvdm backbone)")
        if not isinstance(denoiser, Backbone):
            raise ValueError(f"ThroughputMonitor: the denoiser {type(denoiser).__name__} does not meet the backbone "
                             "contract (lvdm.models.contract.Backbone: it declares no FLOP model `forward_flops`)")
        self._model = denoiser
        self._hook = denoiser.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        precision = str(trainer.precision)
        if self.peak_flops is not None:
            self._peak = float(self.peak_flops)
        elif self.device_kind is not None:
            self._peak = PEAKS[self.device_kind].get(dtype_key(precision))
        else:
            try:
                self._peak = device_peak_flops(pl_module.device, precision)
            except ValueError:  # a precision plugin the table has no column for: no MFU, still throughput
                self._peak = None

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _sync_time(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per window: the window's time is device time
        return time.perf_counter()

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        self._steps += 1
        if self._steps < self.skip_first:
            return
        if self._mark is None or self._steps == self.skip_first:
            self._mark = self._sync_time(pl_module.device)
            self._acc = {"samples": 0, "tokens": 0, "flops": 0}
            self._in_window = 0
            return
        self._in_window += 1
        if self._in_window < self.window:
            return
        now = self._sync_time(pl_module.device)
        elapsed = max(now - self._mark, 1e-9)
        # Under sequence parallelism the P ranks of a group share each sample: the hook saw whole
        # samples, so samples count once per data-parallel replica and each rank did 1/P of the FLOPs.
        from lvdm.distributed.ranks import data_parallel_rank_world

        _, replicas = data_parallel_rank_world(trainer)
        share = replicas / trainer.world_size
        flops = self._acc["flops"] * share
        row = {
            "perf/samples_per_sec": replicas * self._acc["samples"] / elapsed,
            "perf/tokens_per_sec": replicas * self._acc["tokens"] / elapsed,
            "perf/tflops_per_device": flops / elapsed / 1e12,
            "perf/step_time_ms": 1000 * elapsed / self._in_window,
        }
        if self._peak:
            row["perf/mfu"] = flops / elapsed / self._peak
        self.history.append(row)
        pl_module.log_dict(row, on_step=True, on_epoch=False, rank_zero_only=True)
        self._mark = now
        self._acc = {"samples": 0, "tokens": 0, "flops": 0}
        self._in_window = 0
