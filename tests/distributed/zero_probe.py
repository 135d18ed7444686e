"""A test-only Lightning callback that records, on every rank, what the ZeRO tests check.

It reads whole weights its own way (the module's parameters under ZeRO-2 in float32, where
DeepSpeed keeps them equal to the master weights; ``GatheredParameters`` under ZeRO-3), not
through ``lvdm.distributed.zero``, so the EMA it checks is computed independently. Loaded by
``class_path`` in the ranks Lightning launches (the test puts this folder on PYTHONPATH).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lvdm.training.callbacks.ema import EMA


def whole_weights(pl_module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in pl_module.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                out[name] = p.detach().float().clone().cpu()
        else:
            out[name] = p.detach().float().clone().cpu()
    return out


class ZeroProbe(Callback):
    """Record losses, weights per step, EMA state and the EMA swap of each rank to ``<out>/<tag>_rank<r>.pt``.

    Args:
        out: folder for the records.
        tag: name of this run in the file names.
    """

    def __init__(self, out: str, tag: str):
        self.out, self.tag = Path(out), tag
        self.record = {"losses": [], "steps": [], "swap_diff": [], "restore_diff": []}

    def _ema(self, trainer) -> EMA:
        return next(c for c in trainer.callbacks if isinstance(c, EMA))

    def on_train_start(self, trainer, pl_module):
        ema = self._ema(trainer)
        self.record["start_step"] = trainer.global_step
        self.record["start_weights"] = whole_weights(pl_module)
        self.record["ema_at_start"] = {"num_updates": ema.num_updates, "shadow": {k: v.clone().cpu() for k, v in ema.shadow.items()}}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.record["losses"].append(float(outputs["loss"]))
        self.record["steps"].append((trainer.global_step, whole_weights(pl_module)))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.state.fn == "fit" and not trainer.sanity_checking and self.record["steps"]:
            shadow = self._ema(trainer).shadow
            now = whole_weights(pl_module)
            self.record["swap_diff"].append(max((now[k] - shadow[k].cpu()).abs().max().item() for k in now))

    def on_validation_end(self, trainer, pl_module):  # runs after EMA's (callbacks run in order)
        if not trainer.sanity_checking and self.record["steps"]:
            now, before = whole_weights(pl_module), self.record["steps"][-1][1]
            self.record["restore_diff"].append(max((now[k] - before[k]).abs().max().item() for k in now))

    def on_fit_end(self, trainer, pl_module):
        ema = self._ema(trainer)
        self.record["end_step"] = trainer.global_step
        self.record["ema_at_end"] = {"num_updates": ema.num_updates, "shadow": {k: v.clone().cpu() for k, v in ema.shadow.items()}}
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out / f"{self.tag}_rank{trainer.global_rank}.pt")
