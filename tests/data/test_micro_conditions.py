"""Batches carry the micro-conditions the denoiser is conditioned on: the pixel height and width
the clip was cut to, and its fps by Open-Sora 1.2's rule (an image: 120; a video: its frame rate
// frame_interval)."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from lvdm.data.datamodule import LatentDataModule, VideoDataModule, clip_fps
from lvdm.shapes.mixed import write_mixed_shapes
from lvdm.shapes.synthetic import FPS, write_synthetic_dataset
from lvdm.models.contract import IMAGE_FPS


def _kinds(shard_glob) -> dict[str, str]:
    """key → "image" / "video" from the shards' media entries."""
    kinds = {}
    for path in sorted(shard_glob):
        with tarfile.open(path) as tar:
            for name in tar.getnames():
                key, ext = name.split(".", 1)
                if ext in ("png", "mp4"):
                    kinds[key] = "image" if ext == "png" else "video"
    return kinds


def test_mixed_batches_carry_pixel_size_and_image_fps(tmp_path):
    write_mixed_shapes(str(tmp_path), num_train=4, num_val=24, shard_size=24)
    kinds = _kinds(tmp_path.glob("val-*.tar"))
    assert set(kinds.values()) == {"image", "video"}
    # 1-frame clips: images are read, videos give their first frame; 20 x 36 is no multiple of 8
    dm = VideoDataModule(str(tmp_path / "train-*.tar"), str(tmp_path / "val-*.tar"), batch_size=8, num_frames=1,
                         resolution=(20, 36))
    dm.setup("fit")
    seen = 0
    for batch in dm.val_dataloader():
        b = len(batch["key"])
        assert batch["video"].shape[-2:] == (20, 36)
        torch.testing.assert_close(batch["height"], torch.full((b,), 20.0))
        torch.testing.assert_close(batch["width"], torch.full((b,), 36.0))
        want = [IMAGE_FPS if kinds[k] == "image" else float(FPS) for k in batch["key"]]
        torch.testing.assert_close(batch["fps"], torch.tensor(want))
        seen += b
    assert seen == len(kinds)


def test_video_fps_is_the_rate_of_the_frames_taken(tmp_path):
    write_synthetic_dataset(str(tmp_path), num_train=4, num_val=4, shard_size=4)
    dm = VideoDataModule(str(tmp_path / "train-*.tar"), str(tmp_path / "val-*.tar"), batch_size=4, num_frames=3,
                         frame_interval=3, resolution=(16, 24))
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(batch["fps"], torch.full((4,), float(FPS // 3)))  # 8 fps // 3 = 2, as Open-Sora
    torch.testing.assert_close(batch["height"], torch.full((4,), 16.0))
    torch.testing.assert_close(batch["width"], torch.full((4,), 24.0))


def test_clip_fps_rule():
    assert clip_fps({"fps": 30}, 1, image=True) == IMAGE_FPS
    assert clip_fps({"fps": 29.97}, 1, image=False) == 29.0
    assert clip_fps({"fps": 30}, 4, image=False) == 7.0
    assert clip_fps({}, 2, image=False) == 12.0  # no fps anywhere: Open-Sora's default 24


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


@pytest.mark.parametrize("meta, num_frames, want", [
    ({"fps": 30, "frames": 40, "resolution": [20, 36], "frame_interval": 2}, None, (20.0, 36.0, 15.0)),
    ({"fps": 30, "frames": 40, "bucket": {"name": "b", "height": 24, "width": 40}}, None, (24.0, 40.0, 30.0)),
    ({"fps": 30, "frames": 40, "resolution": [20, 36]}, 1, (20.0, 36.0, IMAGE_FPS)),  # an image phase
    ({"kind": "image", "frames": 1, "resolution": [20, 36]}, None, (20.0, 36.0, IMAGE_FPS)),
])
def test_latent_samples_carry_the_encoded_pixel_size_and_fps(tmp_path, meta, num_frames, want):
    dm = LatentDataModule(str(tmp_path), num_frames=num_frames)
    sample = {"latent.npy": _npy(np.zeros((4, 3, 5, 9), np.float32)), "txt": b"a red square",
              "json": json.dumps(meta).encode()}
    out = dm.decode_sample(sample, np.random.default_rng(0), random_start=False)
    assert (float(out["height"]), float(out["width"]), float(out["fps"])) == want


def test_latent_samples_without_a_recorded_size_carry_none(tmp_path):
    dm = LatentDataModule(str(tmp_path))
    sample = {"latent.npy": _npy(np.zeros((4, 3, 5, 9), np.float32)), "txt": b"x", "json": b"{}"}
    out = dm.decode_sample(sample, np.random.default_rng(0), random_start=False)
    assert not {"height", "width", "fps"} & set(out)


@pytest.mark.parametrize("meta", [{"bucket": {"name": "b"}}, {"resolution": [20]}, {"resolution": ["x", 3]}])
def test_latent_samples_with_an_incomplete_size_carry_none(tmp_path, meta):
    dm = LatentDataModule(str(tmp_path))
    sample = {"latent.npy": _npy(np.zeros((4, 3, 5, 9), np.float32)), "txt": b"x", "json": json.dumps(meta).encode()}
    assert "height" not in dm.decode_sample(sample, np.random.default_rng(0), random_start=False)


def test_a_batch_where_some_samples_lack_the_size_leaves_it_out():
    from lvdm.data.datamodule import _collate

    full = {"latent": torch.zeros(2), "height": torch.tensor(8.0), "width": torch.tensor(8.0), "fps": torch.tensor(8.0),
            "key": "a"}
    batch = _collate([full, {"latent": torch.zeros(2), "key": "b"}])
    assert set(batch) == {"latent", "key"}
    assert set(_collate([full, full])) == set(full)
