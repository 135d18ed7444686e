import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lvdm.training.autoencoder_module import AutoencoderModule
from lvdm.autoencoders import CausalVAE3D, PatchDiscriminator3D, VideoVQVAE
from lvdm.training.callbacks.ema import EMA
from lvdm.training.module import WarmupCosineLR


class Clips(Dataset):
    def __init__(self, frames):
        self.frames = frames

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"video": torch.rand(3, self.frames, 16, 16, generator=g) * 2 - 1}


def tiny_vae():
    return CausalVAE3D(latent_channels=4, base_channels=8, channel_mult=(1, 1), num_res_blocks=1,
                       time_downsample=2, spatial_downsample=2)


def fit(module, frames, steps, tmp_path, callbacks=()):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                        default_root_dir=tmp_path, limit_val_batches=1, num_sanity_val_steps=0)
    loader = DataLoader(Clips(frames), batch_size=4)
    trainer.fit(module, loader, loader)
    return trainer


def test_vae_gan_fit_two_optimisers_warmup_and_ema(tmp_path):
    torch.manual_seed(0)
    module = AutoencoderModule(tiny_vae(), PatchDiscriminator3D(base_channels=8, num_layers=2), gan_start=2, gan_warmup=2,
                               optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    assert module.gan_factor() == 0.0
    disc_before = [p.detach().clone() for p in module.discriminator.parameters()]
    ema = EMA(decay=0.9)
    trainer = fit(module, 5, 6, tmp_path, [ema])
    # max_steps counts both optimisers' steps: the discriminator joins at generator step 2, so
    # 6 optimiser steps are 4 generator steps (1, 2, then 2 + 2)
    assert int(module.generator_steps) == 4 and trainer.global_step == 6
    assert module.gan_factor() == 1.0  # warm-up over (step 2: 0.5, step 3: 1.0)
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, module.discriminator.parameters()))
    assert ema.num_updates >= 4
    # validation (after fit) stored the latent statistics the compressor adapter uses
    assert module.latent_std.shape == (4,) and not torch.equal(module.latent_std, torch.ones(4))
    metrics = trainer.callback_metrics
    assert {"val/psnr", "train/d_loss", "train/g_loss", "train/kl"} <= set(metrics)


def test_reconstruction_loss_decreases_and_vq_stats_logged(tmp_path):
    torch.manual_seed(0)
    vq = VideoVQVAE(latent_channels=4, num_codes=16, base_channels=8, channel_mult=(1, 1), num_res_blocks=1,
                    time_downsample=2, spatial_downsample=2)
    module = AutoencoderModule(vq, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    batch = {"video": torch.stack([Clips(4)[i]["video"] for i in range(4)])}
    with torch.no_grad():
        before = module.reconstruction_loss(module.reconstruct(batch["video"])[1], batch["video"])
    trainer = fit(module, 4, 12, tmp_path)
    with torch.no_grad():
        after = module.reconstruction_loss(module.reconstruct(batch["video"])[1], batch["video"])
    assert after < before
    assert {"train/usage", "train/perplexity", "train/commitment"} <= set(trainer.callback_metrics)
    assert trainer.global_step == 12  # no discriminator: one optimiser step per batch


def test_lr_schedule_steps_once_per_generator_step_with_and_without_gan(tmp_path):
    """The schedule counts generator steps: 6 optimiser steps with the GAN from generator step 2 are
    4 generator steps, so the cosine is at 4 of 8; without the GAN 6 steps are 6 of 8."""
    def schedule(opt):
        return WarmupCosineLR(opt, warmup_steps=2, total_steps=8, min_ratio=0.0)

    def expected(step):  # the factor of WarmupCosineLR(2, 8, 0) after `step` steps, by hand
        return (step + 1) / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / 6))

    for discriminator, generator_steps in ((None, 6), (PatchDiscriminator3D(base_channels=8, num_layers=2), 4)):
        torch.manual_seed(0)
        module = AutoencoderModule(tiny_vae(), discriminator, gan_start=2, gan_warmup=1, lr_scheduler=schedule,
                                   optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
        trainer = fit(module, 5, 6, tmp_path)
        assert int(module.generator_steps) == generator_steps
        generator_optimizer = trainer.optimizers[0]
        assert generator_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * expected(generator_steps))
        if discriminator is not None:  # the discriminator's rate is not scheduled
            assert trainer.optimizers[1].param_groups[0]["lr"] == 1e-4  # _default_optimizer
        assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == generator_steps


def test_invalid_frame_count_fails_clearly(tmp_path):
    module = AutoencoderModule(tiny_vae())
    with pytest.raises(ValueError, match=r"num_frames=4 .*1 \+ 2k"):
        fit(module, 4, 1, tmp_path)


def test_trained_autoencoder_loads_as_compressor_from_ckpt_and_safetensors(tmp_path):
    """The recipe-carrying checkpoint that `lvdm fit` writes, and its exported .safetensors,
    load through lvdm.checkpoints.load.load_module into an AutoencoderCompressor."""
    import yaml

    from lvdm.cli import main
    from lvdm.compressors.autoencoder import AutoencoderCompressor
    from lvdm.shapes.synthetic import write_synthetic_dataset

    write_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_val=4, num_frames=5, size=32)
    recipe = {
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 1, "logger": False,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lvdm.training.callbacks.ema.EMA", "init_args": {"decay": 0.9}},
                                  {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0}}]},
        "model": {"class_path": "lvdm.training.autoencoder_module.AutoencoderModule", "init_args": {"autoencoder": {
            "class_path": "lvdm.autoencoders.CausalVAE3D",
            "init_args": {"latent_channels": 4, "base_channels": 8, "channel_mult": [1, 1, 1], "num_res_blocks": 1,
                          "time_downsample": 4, "spatial_downsample": 4, "patch_size": 2}}}},
        "data": {"class_path": "lvdm.data.datamodule.VideoDataModule",
                 "init_args": {"train_shards": str(tmp_path / "data/train-*.tar"), "val_shards": str(tmp_path / "data/val-*.tar"),
                               "num_frames": 5, "resolution": 16, "batch_size": 4, "samples_per_epoch": 8}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    main(["fit", "--config", str(tmp_path / "recipe.yaml")])
    ckpt = tmp_path / "ckpt/last.ckpt"
    comp = AutoencoderCompressor(str(ckpt))
    assert "EMA" in comp.source
    assert (comp.latent_channels, comp.time_downsample, comp.spatial_downsample, comp.causal_time) == (4, 4, 4, True)
    assert isinstance(comp.scale_factor, list) and len(comp.scale_factor) == 4  # per-channel statistics
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    z = comp.encode(video)
    assert z.shape == (2, 4, 2, 4, 4) and comp.decode(z).shape == video.shape
    with pytest.raises(ValueError, match=r"num_frames=4 is not valid .*1 \+ 4k"):
        comp.encode(video[:, :, :4])
    main(["checkpoint", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ae.safetensors"), "--ema", "true"])
    exported = AutoencoderCompressor(str(tmp_path / "ae.safetensors"))
    torch.testing.assert_close(exported.encode(video), z)
