"""Validation loss at fixed timesteps and fixed noise, so runs compare without sampling.

The ordinary ``val/loss`` draws new times and noise every pass, so two evaluations of the
same weights differ and small improvements drown in that noise. Open-Sora 1.2 evaluates the
loss instead on a fixed grid of timesteps with fixed noise; this callback does the same for
any lvdm objective (through ``Objective.loss_at`` / ``Objective.fixed_timesteps``).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["FixedTimestepValLoss"]


class FixedTimestepValLoss(Callback):
    """Log the validation loss at ``num_timesteps`` fixed times with fixed noise.

    For each validation batch, the noise comes from a generator seeded with ``seed``, the
    batch index and the data-parallel rank (drawn on the CPU, so it does not depend on the device);
    captions are never dropped. Logged, averaged over the validation epoch (and processes):
    ``val/loss_t<t>`` for each time of the grid (the objective's units: ``t`` in (0, 1) for
    rectified flow, the integer step for DDPM) and their mean, ``val/loss_fixed``.

    Args:
        num_timesteps: number of evenly spaced interior times (Open-Sora 1.2 uses 10).
        seed: base seed of the noise.
    """

    def __init__(self, num_timesteps: int = 10, seed: int = 0) -> None:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1; got {num_timesteps}")
        self.num_timesteps = num_timesteps
        self.seed = seed

    @staticmethod
    def _name(t: torch.Tensor) -> str:
        return f"val/loss_t{int(t)}" if not t.is_floating_point() else f"val/loss_t{float(t):.3f}"

    @torch.no_grad()
    def losses(self, pl_module: L.LightningModule, batch: dict, batch_idx: int, rank: int = 0) -> dict[str, torch.Tensor]:
        """``{log name: mean loss over the batch}`` at each time of the grid, for one batch."""
        objective = pl_module.objective
        latents = pl_module.latents(batch)
        ctx, mask = pl_module.encode_text(list(batch["caption"]))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + rank * 100_003 + batch_idx)
        noise = torch.randn(latents.shape, generator=generator).to(latents)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return pl_module.denoiser(x, t, ctx, mask)

        out = {}
        for t in objective.fixed_timesteps(self.num_timesteps):
            times = t.expand(latents.shape[0]).to(latents.device)
            out[self._name(t)] = objective.loss_at(model_fn, latents, noise, times).mean()
        out["val/loss_fixed"] = torch.stack(list(out.values())).mean()
        return out

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from lvdm.distributed.ranks import data_parallel_rank_world

        # Seeded by the data-parallel rank: the ranks of a sequence-parallel group hold the same
        # batch and must draw the same noise. Run under the trainer's precision (autocast), as
        # the validation step itself is.
        rank, _ = data_parallel_rank_world(trainer)
        with trainer.strategy.precision_plugin.forward_context():
            values = self.losses(pl_module, batch, batch_idx, rank=rank)
        batch_size = len(batch["caption"])
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size,
                          prog_bar=name == "val/loss_fixed")
