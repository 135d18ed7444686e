import io
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
from jsonargparse import ArgumentParser

from lvdm.compressors.pixels import PixelCompressor
from lvdm.data.datamodule import LatentDataModule, VideoDataModule
from lvdm.curation.encode import encode_shards
from lvdm.data.shards import write_shards
from lvdm.shapes.synthetic import write_synthetic_dataset
from lvdm.data.video import decode_clip
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder

ADDED = {"latent_shape": [3, 8, 32, 32], "compressor": "lvdm.compressors.pixels.PixelCompressor",
         "compressor_config_hash": PixelCompressor().identity()["compressor_config_hash"], "scale_factor": 1.0, "shift_factor": 0.0, "num_frames": 8, "frame_interval": 1, "resolution": [32, 32]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    write_synthetic_dataset(str(root / "video"), num_train=24, num_val=8, shard_size=10)
    summary = encode_shards(str(root / "video"), str(root / "latent"), batch_size=4)
    return root, summary


def _samples(path):
    return list(wds.WebDataset(str(path), shardshuffle=False))


def test_encode_writes_latents_captions_metadata(data):
    root, summary = data
    names = ["train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    assert [p.split("/")[-1] for p in summary["shards"]] == names
    assert summary["encoded"] == 32 and summary["skipped"] == 0 and summary["latent_shape"] == [3, 8, 32, 32]
    assert (root / "latent" / "val_prompts.txt").read_text() == (root / "video" / "val_prompts.txt").read_text()
    for name in names:
        videos, latents = _samples(root / "video" / name), _samples(root / "latent" / name)
        assert [s["__key__"] for s in latents] == [s["__key__"] for s in videos]
        for video, latent in zip(videos, latents):
            array = np.load(io.BytesIO(latent["latent.npy"]))
            assert array.dtype == np.float16
            expected = decode_clip(video["mp4"], 8, 1, 32)
            torch.testing.assert_close(torch.from_numpy(array).float(), expected, atol=1e-3, rtol=0)
            assert latent["txt"] == video["txt"]
            assert json.loads(latent["json"]) == {**json.loads(video["json"]), **ADDED}


def test_encode_skips_and_counts_corrupt_clips(data, tmp_path):
    root, _ = data
    good = _samples(root / "video" / "val-000000.tar")[:3]
    samples = [{"key": s["__key__"], "mp4": s["mp4"], "txt": s["txt"].decode(), "json": json.loads(s["json"])}
               for s in good]
    samples[1]["mp4"] = samples[1]["mp4"][:100]  # truncated
    write_shards(samples, str(tmp_path / "in" / "bad-%06d.tar"))
    with pytest.warns(UserWarning, match=r"skipping sample 'val_000001' in shard .*bad-000000.tar"):
        summary = encode_shards(str(tmp_path / "in" / "bad-*.tar"), str(tmp_path / "out"))
    assert summary["encoded"] == 2 and summary["skipped"] == 1
    assert [s["__key__"] for s in _samples(tmp_path / "out" / "bad-000000.tar")] == ["val_000000", "val_000002"]


def test_latent_datamodule_shapes_counts_and_ranks(data):
    root, _ = data
    dm = LatentDataModule(str(root / "latent" / "train-*.tar"), str(root / "latent" / "val-*.tar"),
                          batch_size=4, samples_per_epoch=20, shuffle_buffer=8)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 5
    for batch in batches:
        assert batch["latent"].shape == (4, 3, 8, 32, 32) and batch["latent"].dtype == torch.float32
        assert len(batch["caption"]) == 4 and all(k.startswith("train_") for k in batch["key"])
    assert [k for b in dm.val_dataloader() for k in b["key"]] == [f"val_{i:06d}" for i in range(8)]
    counts = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        counts.append(len(list(dm.train_dataloader())))
    assert counts == [2, 2] and dm.skipped == 0


def test_bad_latents_skipped_or_named(tmp_path, caplog):
    def shard(name, shapes):
        with wds.TarWriter(str(tmp_path / name)) as sink:
            for i, shape in enumerate(shapes):
                sink.write({"__key__": f"k{i}", "latent.npy": np.zeros(shape, np.float16), "txt": "a caption"})

    shard("flat.tar", [(3, 8, 4, 4), (3, 4, 4), (3, 8, 4, 4)])
    dm = LatentDataModule(str(tmp_path / "flat.tar"), str(tmp_path / "flat.tar"), batch_size=2)
    dm.setup("fit")
    with caplog.at_level("WARNING", logger="lvdm.data"):
        assert [b["key"] for b in dm.val_dataloader()] == [["k0", "k2"]]
    assert re.search(r"'k1' in shard .*flat.tar: ValueError: latent has shape \[3, 4, 4\]", caplog.text)
    assert dm.skipped == 1
    shard("mixed.tar", [(3, 8, 4, 4), (3, 8, 8, 8)])
    dm = LatentDataModule(str(tmp_path / "mixed.tar"), str(tmp_path / "mixed.tar"), batch_size=2)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"'latent' tensors of different shapes \('k0': \[3, 8, 4, 4\], 'k1'"):
        list(dm.val_dataloader())


def test_loss_on_latents_equals_loss_on_video(data):
    root, _ = data
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=1, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8), RectifiedFlow()).eval()
    shards = str(root / "latent" / "val-000000.tar"), str(root / "video" / "val-000000.tar")
    batches = []
    for dm in LatentDataModule(shards[0], shards[0], batch_size=4), VideoDataModule(shards[1], shards[1], batch_size=4):
        dm.setup("validate")
        batches.append(next(iter(dm.val_dataloader())))
    latent, video = batches
    assert latent["key"] == video["key"] and latent["caption"] == video["caption"]
    losses = []
    for batch in latent, video:
        torch.manual_seed(1)
        losses.append(module.diffusion_loss(batch))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-3, rtol=1e-3)


def test_encode_through_jsonargparse(data, tmp_path):
    root, _ = data
    parser = ArgumentParser()
    parser.add_function_arguments(encode_shards)
    cfg = parser.parse_args(["--shards", str(root / "video" / "val-000000.tar"), "--out", str(tmp_path),
                             "--compressor", "lvdm.compressors.pixels.PixelCompressor", "--dtype", "float32"])
    init = parser.instantiate_classes(cfg)
    assert isinstance(init.compressor, PixelCompressor)
    summary = encode_shards(**vars(init))
    assert summary["encoded"] == 8 and (tmp_path / "val-000000.tar").is_file()
    with pytest.raises(ValueError, match="dtype must be a numpy floating type"):
        encode_shards(str(root / "video" / "val-000000.tar"), str(tmp_path), dtype="int8")


def test_training_refuses_latents_of_another_compressor(data):
    """Latent shards record their compressor; a model whose compressor differs (another class,
    or the same class with other weights) is refused at setup, naming both."""
    import lightning as L

    from lvdm.autoencoders import CausalVAE3D
    from lvdm.compressors.autoencoder import AutoencoderCompressor
    from lvdm.data.shards import check_latent_compressor

    root, _ = data
    shard = str(root / "latent" / "train-000000.tar")
    check_latent_compressor(shard, PixelCompressor())  # the one that wrote them
    torch.manual_seed(0)
    vae = CausalVAE3D(latent_channels=3, base_channels=8, channel_mult=(1,), num_res_blocks=1, time_downsample=1,
                      spatial_downsample=1, causal=False)
    other = AutoencoderCompressor.from_autoencoder(vae)
    with pytest.raises(ValueError, match=r"encoded by lvdm.compressors.pixels.PixelCompressor .* but the model's "
                                         r"compressor is lvdm.compressors.autoencoder.AutoencoderCompressor"):
        check_latent_compressor(shard, other)
    same_class = AutoencoderCompressor.from_autoencoder(CausalVAE3D(latent_channels=3, base_channels=8, channel_mult=(1,),
                                                                    num_res_blocks=1, time_downsample=1, spatial_downsample=1,
                                                                    causal=False))
    assert same_class.identity()["compressor_config_hash"] != other.identity()["compressor_config_hash"]  # other weights
    dit = DiT(in_channels=3, patch_size=(2, 8, 8), hidden_size=32, depth=1, num_heads=2, conditioning="adaln", context_dim=16)
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16), RectifiedFlow(), compressor=other)
    dm = LatentDataModule(str(root / "latent" / "train-*.tar"), batch_size=4, samples_per_epoch=8)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="re-encode the shards with this compressor"):
        trainer.fit(module, dm)
