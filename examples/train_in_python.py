"""lvdm as a library: build the parts in Python, train with a Lightning Trainer, sample, score.

The same run as ``lvdm fit --config recipes/tiny/cross_attn.yaml``, without YAML:

    python examples/train_in_python.py --out runs/python --steps 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch

from lvdm.training.callbacks.ema import EMA
from lvdm.data.datamodule import VideoDataModule
from lvdm.shapes.synthetic import write_synthetic_dataset
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.shapes.probe import probe_folder
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule, WarmupCosineLR
from lvdm.text.words import WordTextEncoder
from lvdm.generation import save_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/python", help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--num_train", type=int, default=1000, help="synthetic training clips")
    args = parser.parse_args()
    out = Path(args.out)

    data_dir = out / "shapes"
    if not (data_dir / "val_prompts.txt").exists():
        write_synthetic_dataset(str(data_dir), num_train=args.num_train, num_val=16)
    data = VideoDataModule(str(data_dir / "train-*.tar"), str(data_dir / "val-*.tar"), batch_size=16)

    dit = DiT(in_channels=3, patch_size=(8, 4, 4), hidden_size=96, depth=3, num_heads=4,
              conditioning="cross_attn", context_dim=64, qk_norm=True)
    module = LatentDiffusionModule(
        denoiser=dit,
        text_encoder=WordTextEncoder(dim=64, max_length=8),
        objective=RectifiedFlow(prediction="sample", shift=3.0, num_sampling_steps=20),
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3),
        lr_scheduler=lambda opt: WarmupCosineLR(opt, warmup_steps=min(100, args.steps), total_steps=args.steps),
        sample_shape=(8, 32, 32),
    )
    ema = EMA(decay=0.999)
    trainer = L.Trainer(max_steps=args.steps, accelerator="auto", devices=1, callbacks=[ema],
                        default_root_dir=str(out), limit_val_batches=1, val_check_interval=min(100, args.steps),
                        check_val_every_n_epoch=None, gradient_clip_val=1.0, log_every_n_steps=10)
    trainer.fit(module, data)

    prompts = (data_dir / "val_prompts.txt").read_text().splitlines()
    module.eval()
    with ema.averaged_weights(module):
        videos = module.generate(prompts, seed=0)
    samples = out / "samples"
    (samples / "prompts.txt").unlink(missing_ok=True)
    save_videos(videos, prompts, samples)
    probe_folder(str(samples))


if __name__ == "__main__":
    main()
