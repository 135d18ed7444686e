import numpy as np
import pytest
import torch

from lvdm.data.video import VideoDecodeError, decode_clip, encode_mp4, read_frames, write_mp4


def _ramp(t=10, h=24, w=40):
    """Frames whose red channel encodes the frame index, so taken frames are identifiable."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = (np.arange(t) * 20 + 20)[:, None, None]
    frames[..., 1] = 100
    return frames


def test_round_trip_shape_range_and_colour(tmp_path):
    frames = _ramp()
    decoded, fps = read_frames(encode_mp4(frames, fps=8))
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(8)
    assert np.abs(decoded.astype(int) - frames).mean() < 3
    path = write_mp4(tmp_path / "sub" / "a.mp4", frames, fps=12)
    decoded, fps = read_frames(path)
    assert decoded.shape == frames.shape and fps == pytest.approx(12)


def test_odd_size_keeps_exact_size():
    frames = np.random.default_rng(0).integers(0, 255, (3, 15, 21, 3), dtype=np.uint8)
    assert read_frames(encode_mp4(frames))[0].shape == frames.shape


def test_decode_clip_interval_resize_crop():
    clip = decode_clip(encode_mp4(_ramp()), num_frames=4, frame_interval=3, resolution=(16, 16))
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    red = (clip[0].mean(dim=(1, 2)) + 1) * 127.5  # frames 0, 3, 6, 9 -> red 20, 80, 140, 200
    assert torch.allclose(red, torch.tensor([20.0, 80.0, 140.0, 200.0]), atol=4)
    assert decode_clip(encode_mp4(_ramp()), 2, resolution=(10, 30)).shape == (3, 2, 10, 30)
    assert decode_clip(encode_mp4(_ramp()), 2, resolution=None).shape == (3, 2, 24, 40)


def test_decode_clip_random_start_stays_in_range():
    data = encode_mp4(_ramp())
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(12):
        clip = decode_clip(data, num_frames=3, frame_interval=2, random_start=True, rng=rng)
        red = (clip[0].mean(dim=(1, 2)) + 1) * 127.5
        starts.add(round((red[0].item() - 20) / 20))
        assert torch.allclose(red[1:] - red[:-1], torch.tensor(40.0), atol=4)
    assert starts <= set(range(6)) and len(starts) > 1


def test_too_few_frames_names_the_source(tmp_path):
    path = write_mp4(tmp_path / "short.mp4", _ramp(t=5))
    with pytest.raises(ValueError, match="short.mp4"):
        decode_clip(path, num_frames=4, frame_interval=2)
    with pytest.raises(ValueError, match="clip-7"):
        decode_clip(path.read_bytes(), num_frames=8, name="clip-7")


def test_corrupt_data_raises_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 10)
        decode_clip(tmp_path / "bad.mp4", num_frames=1)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_frames(tmp_path / "missing.mp4")
