"""LatentDataModule(num_frames=...): windows of latent frames, single frames for an image phase."""

import io

import numpy as np
import pytest

from lvdm.data.datamodule import LatentDataModule


def sample(frames=8):
    buf = io.BytesIO()
    np.save(buf, np.arange(2 * frames * 3 * 3, dtype=np.float32).reshape(2, frames, 3, 3))
    return {"latent.npy": buf.getvalue(), "txt": b"a red square moving left"}


def test_windows_of_latent_frames():
    rng = np.random.default_rng(0)
    whole = LatentDataModule("x")
    full = whole.decode_sample(sample(), rng, True)["latent"]
    assert full.shape == (2, 8, 3, 3)
    images = LatentDataModule("x", num_frames=1)
    starts = set()
    for _ in range(40):
        frame = images.decode_sample(sample(), rng, True)["latent"]
        assert frame.shape == (2, 1, 3, 3)
        start = int(frame[0, 0, 0, 0].item()) // 9  # the frame index it was cut from
        assert (frame == full[:, start : start + 1]).all()
        starts.add(start)
    assert len(starts) > 4, "training windows start at random frames"
    window = LatentDataModule("x", num_frames=3).decode_sample(sample(), rng, False)["latent"]
    assert (window == full[:, :3]).all(), "evaluation takes the first frames"


def test_bad_num_frames():
    with pytest.raises(ValueError, match="num_frames"):
        LatentDataModule("x", num_frames=0)
    with pytest.raises(ValueError, match="fewer than num_frames=9"):
        LatentDataModule("x", num_frames=9).decode_sample(sample(), np.random.default_rng(0), True)
