"""Bad samples that used to crash or cost without bound: a ``key.json`` that is valid JSON but
not an object, decode bombs (a few KB that decode to gigabytes), empty shards."""

import io
import json

import numpy as np
import pytest
import webdataset as wds

from lvdm.data.buckets import BucketConfig
from lvdm.data.datamodule import LatentDataModule, VideoDataModule
from lvdm.data.guard import DataGuard
from lvdm.data.video import encode_mp4

BAD_JSON = [b"[1, 2]", b"7", b'"text"', b"{not json", b"\xff\xfe"]


def _tar(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def _video_samples(rng, n_good=4):
    clip = encode_mp4(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    good = [{"__key__": f"good{i}", "mp4": clip, "txt": b"a clip", "json": json.dumps({"fps": 8}).encode()}
            for i in range(n_good)]
    bad = [{"__key__": f"bad{i}", "mp4": clip, "txt": b"a clip", "json": data} for i, data in enumerate(BAD_JSON)]
    return good + bad


def _buckets():
    return BucketConfig({"16": {8: (1.0, 2)}}, aspect_ratios=[1.0], multiple_of=8)


@pytest.mark.parametrize("buckets", [False, True])
def test_video_json_that_is_not_an_object_is_skipped_as_bad_json(tmp_path, buckets):
    url = _tar(tmp_path / "mixed.tar", _video_samples(np.random.default_rng(0)))
    dm = VideoDataModule(url, batch_size=2, num_frames=8, resolution=16, samples_per_epoch=8, shuffle_buffer=0,
                         buckets=_buckets() if buckets else None, data_guard=DataGuard(max_skip_fraction=1.0))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(key.startswith("good") for b in batches for key in b["key"])
    assert dm.skip_reasons["bad_json"] >= len(BAD_JSON) and dm.skip_reasons["invalid"] == 0
    dm.setup("validate")
    dm.val_shards, dm.val_urls = url, [url]
    keys = [key for batch in dm.val_dataloader() for key in batch["key"]]
    assert sorted(keys) == [f"good{i}" for i in range(4)]


def _latent_samples():
    out = []
    for i, meta in enumerate([b'{"bucket": {"name": "b", "resolution": "16", "num_frames": 8}}'] * 4 + BAD_JSON):
        buf = io.BytesIO()
        np.save(buf, np.zeros((4, 2, 2, 2), np.float32))
        out.append({"__key__": f"{'good' if i < 4 else 'bad'}{i}", "latent.npy": buf.getvalue(), "txt": b"a",
                    "json": meta})
    return out


@pytest.mark.parametrize("buckets", [False, True])
def test_latent_json_that_is_not_an_object_is_skipped_as_bad_json(tmp_path, buckets):
    url = _tar(tmp_path / "latents.tar", _latent_samples())
    dm = LatentDataModule(url, batch_size=2, samples_per_epoch=8, shuffle_buffer=0,
                          buckets=_buckets() if buckets else None, data_guard=DataGuard(max_skip_fraction=1.0))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(key.startswith("good") for b in batches for key in b["key"])
    assert dm.skip_reasons["bad_json"] >= len(BAD_JSON)
