"""Issue 13's pipeline through the commands a user types: train lvdm's causal 3D VAE with
`recipes/autoencoder/shapes_vae.yaml`, encode shards with it, train the DiT of
`recipes/autoencoder/shapes_dit_vae.yaml` on those latents, sample (decoded by the VAE), probe."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lvdm.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


def lvdm(*args):
    proc = subprocess.run([sys.executable, "-m", "lvdm.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"lvdm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """9-frame shapes shards and a 2-step shapes_vae.yaml run (with one validation: the latent statistics)."""
    root = tmp_path_factory.mktemp("vae_pipeline")
    data = root / "shapes9"
    main(["data", "synth", "--out", str(data), "--num_train", "16", "--num_val", "4", "--num_frames", "9",
          "--holdout", "false", "--shard_size", "8"])
    lvdm("fit", "--config", "recipes/autoencoder/shapes_vae.yaml", *QUIET,
         "--data.init_args.train_shards", str(data / "train-*.tar"), "--data.init_args.val_shards", str(data / "val-*.tar"),
         "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
         "--trainer.default_root_dir", str(root / "vae"))
    return root, data, root / "vae" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def vae_latents(vae_run):
    """The shards encoded once by `lvdm data encode` with the VAE (run in this process through the
    CLI's entry point; the tests below only read them)."""
    root, data, vae = vae_run
    latents = root / "latents"
    main(["data", "encode", "--shards", str(data), "--out", str(latents), "--num_frames", "9",
          "--compressor", "lvdm.compressors.autoencoder.AutoencoderCompressor", "--compressor.checkpoint", str(vae)])
    return latents


def test_dit_trains_on_the_vae_latents_and_samples_through_the_vae(vae_run, vae_latents):
    root, _, vae = vae_run
    latents = vae_latents
    run = root / "dit"
    lvdm("fit", "--config", "recipes/autoencoder/shapes_dit_vae.yaml", *QUIET,
         "--model.init_args.compressor.init_args.checkpoint", str(vae),
         "--data.init_args.train_shards", str(latents / "train-*.tar"),
         "--data.init_args.val_shards", str(latents / "val-*.tar"),
         "--data.init_args.batch_size", "4", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
         "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(run))
    samples = root / "samples"
    main(["sample", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--prompts", "[a red circle moving left]",
          "--out", str(samples), "--steps", "2"])
    from lvdm.data.video import read_frames

    videos = sorted(samples.glob("*.mp4"))
    assert len(videos) == 1
    frames, _ = read_frames(videos[0].read_bytes())
    assert frames.shape == (9, 32, 32, 3)  # 3 latent frames of the causal VAE → 1 + 4·2 frames


def test_dit_training_refuses_latents_of_another_vae(vae_run, vae_latents, tmp_path):
    """Latent shards name their compressor: a DiT whose VAE differs (here: the raw weights instead
    of the EMA ones the shards were encoded with) is refused before training."""
    _, _, vae = vae_run
    latents = vae_latents
    proc = subprocess.run(
        [sys.executable, "-m", "lvdm.cli", "fit", "--config", "recipes/autoencoder/shapes_dit_vae.yaml", *QUIET,
         "--model.init_args.compressor.init_args.checkpoint", str(vae),
         "--model.init_args.compressor.init_args.weights", "raw",
         "--data.init_args.train_shards", str(latents / "train-*.tar"),
         "--data.init_args.val_shards", str(latents / "val-*.tar"), "--trainer.max_steps", "1",
         "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "re-encode the shards with this compressor" in proc.stderr
    assert torch.load(vae, weights_only=True)["global_step"] == 2
