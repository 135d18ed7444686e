"""The tiny bucketed recipe trains on images + videos of several sizes and lengths and samples
at several sizes and durations; the Open-Sora 1.2-like bucket fragment composes with a recipe."""

from collections import Counter
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lvdm.cli import lightning_cli
from lvdm.shapes.mixed import write_mixed_shapes

ROOT = Path(__file__).resolve().parents[1]


class Shapes(Callback):
    def __init__(self):
        self.shapes = Counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.shapes[tuple(batch["video"].shape)] += 1


def test_tiny_bucket_recipe_trains_on_images_and_videos_and_samples_any_size(tmp_path):
    data = tmp_path / "mixed"
    summary = write_mixed_shapes(str(data), num_train=60, num_val=4, shard_size=30)
    assert any(name.startswith("1x") for name in summary["shapes"]) and len(summary["shapes"]) >= 5
    cli = lightning_cli(["--config", str(ROOT / "recipes/tiny/buckets.yaml"),
                         "--data.init_args.train_shards", str(data / "train-*.tar"),
                         "--data.init_args.val_shards", str(data / "val-*.tar"),
                         "--data.init_args.samples_per_epoch", "64", "--data.init_args.shuffle_buffer", "16",
                         "--model.init_args.denoiser.init_args.hidden_size", "32",
                         "--model.init_args.denoiser.init_args.depth", "1",
                         "--trainer.max_steps", "8", "--trainer.limit_val_batches", "1",
                         "--trainer.val_check_interval", "4", "--trainer.logger", "false",
                         "--trainer.enable_progress_bar", "false",
                         "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    shapes = Shapes()
    cli.trainer.callbacks.append(shapes)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 8
    assert len(shapes.shapes) >= 3, shapes.shapes  # several buckets, images among them
    assert any(shape[2] == 1 for shape in shapes.shapes), shapes.shapes
    model = cli.model.eval()
    for frames, height, width in ((1, 32, 32), (8, 24, 40), (4, 40, 24), (8, 16, 16)):
        video = model.generate(["a red square moving left"], num_frames=frames, height=height, width=width,
                               num_steps=2)
        assert video.shape == (1, 3, frames, height, width) and torch.isfinite(video).all()


def test_open_sora_bucket_fragment_composes_with_a_recipe():
    cli = lightning_cli(["--config", str(ROOT / "recipes/tiny/stdit.yaml"),
                         "--config", str(ROOT / "buckets/opensora12.yaml")], run=False)
    buckets = cli.datamodule.buckets
    assert buckets is not None and buckets.resolutions["144p"][51] == (1.0, 51)
    assert {b.resolution for b in buckets.buckets()} >= {"144p", "240p", "360p", "720p"}
