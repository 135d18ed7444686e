"""Latent + text-embedding caches: written per bucket, read back batched by bucket, equal to
encoding on the fly, the text encoder run once per caption, and refused when made by another
text encoder (another compressor's latents: tests/data/test_latents.py)."""

import json

import pytest
import torch
import webdataset as wds

from lvdm.data.buckets import BucketConfig
from lvdm.data.datamodule import LatentDataModule
from lvdm.curation.encode import encode_shards
from lvdm.shapes.mixed import write_mixed_shapes
from lvdm.shapes.synthetic import ALL_COMBOS, caption
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text import T5TextEncoder
from lvdm.text.tiny import build_tiny_t5
from lvdm.text.words import WordTextEncoder

BUCKETS = BucketConfig({"32": {1: (1.0, 4), 4: (1.0, 2), 8: (1.0, 2)}}, aspect_ratios=[0.6667, 1.0, 1.5],
                       multiple_of=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_mixed_shapes(str(root / "videos"), num_train=24, num_val=2, shard_size=12)
    t5 = build_tiny_t5(root / "t5", [caption(*c) for c in ALL_COMBOS], d_model=16)
    summary = encode_shards(str(root / "videos" / "train-*.tar"), str(root / "latents"), batch_size=4,
                            dtype="float32", buckets=BUCKETS, text_encoder=T5TextEncoder(str(t5), max_length=8))
    return root, t5, summary


def _model(t5, seed=0, **kwargs):
    torch.manual_seed(seed)
    dit = DiT(in_channels=3, patch_size=(1, 8, 8), hidden_size=32, depth=1, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    text = T5TextEncoder(str(t5), max_length=8) if t5 is not None else WordTextEncoder(dim=16, max_length=8)
    return LatentDiffusionModule(dit, text, RectifiedFlow(), **kwargs)


def test_latents_written_per_bucket_with_identities(cache):
    root, _, summary = cache
    assert summary["encoded"] == 24 and summary["skipped"] == 0 and len(summary["buckets"]) >= 3
    for sample in wds.WebDataset(sorted(map(str, (root / "latents").glob("train-*.tar"))), shardshuffle=False):
        meta = json.loads(sample["json"])
        bucket = meta["bucket"]
        assert meta["latent_shape"] == [3, bucket["num_frames"], bucket["height"], bucket["width"]]
        assert meta["compressor"] == "lvdm.compressors.pixels.PixelCompressor" and meta["compressor_config_hash"]
        assert meta["text_encoder_identity"].startswith("lvdm.text.t5.T5TextEncoder@")
        assert "text.npy" in sample and "text_mask.npy" in sample


def test_cached_batches_by_bucket_equal_on_the_fly_loss_with_one_text_encoding(cache):
    root, t5, _ = cache
    dm = LatentDataModule(str(root / "latents" / "train-*.tar"), batch_size=2, samples_per_epoch=24,
                          shuffle_buffer=4, buckets=BUCKETS)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    shapes = {tuple(b["latent"].shape[1:]): len(b["key"]) for b in batches}
    assert len(shapes) >= 2 and all(n == BUCKETS.resolutions["32"][shape[1]][1] for shape, n in shapes.items())
    model = _model(t5, caption_dropout=0.5).train()
    calls = []
    forward = model.text_encoder.forward
    model.text_encoder.forward = lambda captions: calls.append(list(captions)) or forward(captions)
    for batch in batches[:4]:
        torch.manual_seed(1)
        cached = model.diffusion_loss(batch)
        torch.manual_seed(1)
        fly = model.diffusion_loss({k: v for k, v in batch.items() if not k.startswith("text")})
        torch.testing.assert_close(cached, fly)
    cached_calls = [c for c in calls if c == [""]]
    assert len(cached_calls) == 1  # the empty caption, once; every other cached step ran no encoder


def test_a_cache_of_another_part_is_refused(cache):
    root, t5, _ = cache
    dm = LatentDataModule(str(root / "latents" / "train-*.tar"), batch_size=2, samples_per_epoch=8, buckets=BUCKETS)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    other_t5 = build_tiny_t5(root / "t5_other", [caption(*c) for c in ALL_COMBOS], d_model=16, seed=1)
    with pytest.raises(ValueError, match=r"cached by another text encoder .*T5TextEncoder@"):
        _model(other_t5).diffusion_loss(batch)
    with pytest.raises(ValueError, match="trained with the DiT"):
        encode_shards(str(root / "videos" / "val-*.tar"), str(root / "never"), text_encoder=WordTextEncoder(16))
