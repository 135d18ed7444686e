"""Bad samples that used to crash or cost without bound: a ``key.json`` that is valid JSON but
not an object, decode bombs (a few KB that decode to gigabytes), empty shards."""

import io
import json

import av
import numpy as np
import pytest
import webdataset as wds

from lvdm.data import video as video_mod
from lvdm.data.buckets import BucketConfig
from lvdm.data.datamodule import LatentDataModule, VideoDataModule
from lvdm.data.stream_guard import DataGuard
from lvdm.data.video import VideoTooLargeError, decode_clip, encode_mp4

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


def _numbered_gif(frames, size=32):
    """A GIF (no frame count in its header) of ``frames`` frames."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="gif") as container:
        stream = container.add_stream("gif", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "rgb8"
        for i in range(frames):
            image = np.full((size, size, 3), 4 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _counting(monkeypatch):
    pulled = []
    real = video_mod._iter_rgb

    def counting(*args, **kwargs):
        for frame in real(*args, **kwargs):
            pulled.append(1)
            yield frame

    monkeypatch.setattr(video_mod, "_iter_rgb", counting)
    return pulled


def test_a_window_above_max_decoded_bytes_is_refused_from_the_header_before_decoding(monkeypatch):
    data = _numbered_gif(40)
    pulled = _counting(monkeypatch)
    frame = 32 * 32 * 3
    with pytest.raises(VideoTooLargeError, match=r"a window of 16 frames of 32x32 decodes to 49152 bytes, more than "
                                                 r"max_decoded_bytes=30720"):
        decode_clip(data, 16, max_decoded_bytes=10 * frame)
    assert pulled == []  # nothing decoded
    assert decode_clip(data, 16, max_decoded_bytes=16 * frame).shape == (3, 16, 32, 32)


def test_random_starts_stay_within_the_frames_max_decoded_bytes_affords(monkeypatch):
    data = _numbered_gif(60)
    pulled = _counting(monkeypatch)
    starts = set()
    for seed in range(12):  # uncapped, a start in [0, 56] would pass frame 10 with probability 5/6 each
        pulled.clear()
        clip = decode_clip(data, 4, random_start=True, rng=np.random.default_rng(seed), max_decoded_bytes=10 * 32 * 32 * 3)
        assert clip.shape == (3, 4, 32, 32) and 4 <= len(pulled) <= 10  # decoding stops at the window's end
        starts.add(len(pulled) - 4)
    assert len(starts) > 1


def test_decoding_stops_once_the_decoded_frames_pass_max_decoded_bytes():
    """The header may understate the frame size: the real frames are counted as they decode."""
    with av.open(io.BytesIO(_numbered_gif(12))) as container:
        frames = video_mod._iter_rgb(container, "bomb.gif", max_decoded_bytes=5 * 32 * 32 * 3)
        got = []
        with pytest.raises(VideoTooLargeError, match=r"bomb.gif: its first 6 frames \(32x32\) decode to 18432 bytes, "
                                                     r"more than max_decoded_bytes=15360"):
            for frame in frames:
                got.append(frame)
    assert len(got) == 5


@pytest.mark.parametrize("buckets", [False, True])
def test_a_decode_bomb_in_a_shard_is_skipped_as_too_large(tmp_path, buckets):
    rng = np.random.default_rng(0)
    good = encode_mp4(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    bomb = _numbered_gif(40, size=64)  # 64x64: 4x the pixels of a good clip
    samples = [{"__key__": f"good{i}", "mp4": good, "txt": b"a", "json": b"{}"} for i in range(4)]
    samples += [{"__key__": f"bomb{i}", "gif": bomb, "txt": b"a", "json": b"{}"} for i in range(4)]
    url = _tar(tmp_path / "bombs.tar", samples)
    dm = VideoDataModule(url, batch_size=2, num_frames=8, resolution=16, samples_per_epoch=8, shuffle_buffer=0,
                         buckets=_buckets() if buckets else None, max_decoded_bytes=8 * 16 * 16 * 3 * 2,
                         data_guard=DataGuard(max_skip_fraction=1.0))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(key.startswith("good") for b in batches for key in b["key"])
    assert dm.skip_reasons["too_large"] >= 4


def test_max_decoded_bytes_must_be_positive():
    with pytest.raises(ValueError, match=r"VideoDataModule.max_decoded_bytes must be >= 1, got 0"):
        VideoDataModule("shards", max_decoded_bytes=0)
