"""AutoencoderModule on two CPU processes (gloo): DDP with the GAN's two optimisers, and
DeepSpeed ZeRO-2 for the reconstruction-only recipes; both ranks end with the same weights."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lvdm.training.autoencoder_module import AutoencoderModule
from lvdm.autoencoders import CausalVAE3D, PatchDiscriminator3D

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run_probe(kind, tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HERE / "autoencoder_probe.py"), kind, str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ddp_trains_the_gan_with_both_optimisers_and_ranks_agree(tmp_path):
    """Without find_unused_parameters DDP stops at the first step (each optimiser's step leaves
    the other's parameters unused); the module sets it."""
    proc, (rank0, rank1) = run_probe("ddp", tmp_path)
    assert "find_unused_parameters=True" in proc.stdout + proc.stderr
    # the GAN from generator step 1: batch 0 is one optimiser step, each later batch two; max_steps=6
    # is checked between batches, so training stops after batch 3 with 7 optimiser steps
    assert rank0["generator_steps"] == rank1["generator_steps"] == 4 and rank0["global_step"] == 7
    assert rank0["changed"] > 0
    assert rank0["weights"] == rank1["weights"]


@pytest.mark.slow  # DeepSpeed's import and start take ~30 s
def test_zero2_trains_the_reconstruction_only_autoencoder_and_ranks_agree(tmp_path):
    pytest.importorskip("deepspeed")
    _, (rank0, rank1) = run_probe("zero2", tmp_path)
    assert rank0["generator_steps"] == rank1["generator_steps"] == 6 and rank0["changed"] > 0
    assert rank0["weights"] == pytest.approx(rank1["weights"], rel=1e-6, abs=1e-6)


def test_deepspeed_with_a_discriminator_fails_before_training_with_the_fix():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    vae = CausalVAE3D(latent_channels=4, base_channels=8, channel_mult=(1, 1), num_res_blocks=1,
                      time_downsample=2, spatial_downsample=2)
    module = AutoencoderModule(vae, PatchDiscriminator3D(base_channels=8, num_layers=2))
    module._trainer = SimpleNamespace(strategy=DeepSpeedStrategy.__new__(DeepSpeedStrategy))
    with pytest.raises(ValueError, match="DeepSpeedStrategy takes one.*--trainer.strategy ddp"):
        module.setup("fit")
    module.discriminator = None  # reconstruction only: accepted
    module.setup("fit")
    assert torch.is_tensor(module.generator_steps)
