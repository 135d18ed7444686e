"""Fits a tiny AutoencoderModule on two CPU processes and writes what each rank ends with.

``python autoencoder_probe.py <ddp|zero2> <out folder>``: ``ddp`` trains with the discriminator
(two optimisers), ``zero2`` without (DeepSpeed takes one optimiser). Run by
test_autoencoder_parallel.py (Lightning's DDP launcher re-runs this script for rank 1).
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lvdm.training.autoencoder_module import AutoencoderModule
from lvdm.autoencoders import CausalVAE3D, PatchDiscriminator3D


class Clips(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"video": torch.rand(3, 5, 16, 16, generator=g) * 2 - 1}


def main(kind: str, out: Path) -> None:
    torch.manual_seed(0)
    vae = CausalVAE3D(latent_channels=4, base_channels=8, channel_mult=(1, 1), num_res_blocks=1,
                      time_downsample=2, spatial_downsample=2)
    if kind == "ddp":
        module = AutoencoderModule(vae, PatchDiscriminator3D(base_channels=8, num_layers=2), gan_start=1, gan_warmup=1)
        strategy = "ddp"
    else:
        from lvdm.distributed.cpu_deepspeed import CPUDeepSpeedStrategy

        module, strategy = AutoencoderModule(vae), CPUDeepSpeedStrategy(stage=2)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", devices=2, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=1, num_sanity_val_steps=0)
    before = torch.cat([p.detach().flatten().clone() for p in vae.parameters()])
    trainer.fit(module, DataLoader(Clips(), batch_size=2), DataLoader(Clips(), batch_size=2))
    after = torch.cat([p.detach().flatten() for p in vae.parameters()])
    record = {"generator_steps": int(module.generator_steps), "global_step": trainer.global_step,
              "weights": after.tolist()[:64] + [float(after.double().sum())],
              "changed": float((after - before).abs().max()), "psnr": float(trainer.callback_metrics["val/psnr"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
