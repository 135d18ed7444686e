"""`lvdm sample --image` and `--video --extend` end to end from a checkpoint written by `lvdm fit`."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvdm.cli import main
from lvdm.data.given import fit_frames, frames_to_tensor, read_images, read_video
from lvdm.shapes.synthetic import render_clip
from lvdm.data.video import decode_clip, read_frames, write_mp4

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("given")
    data = tmp / "shapes"
    run = tmp / "run"
    for args in (["data", "synth", "--out", str(data), "--num_train", "16", "--num_val", "4"],
                 ["fit", "--config", "recipes/tiny/adaln.yaml", "--config", "callbacks/checkpoint.yaml",
                  "--model.init_args.frame_masks", "lvdm.diffusion.masking.FrameMasks",
                  "--model.init_args.frame_masks.image_to_video", "0.5",
                  "--data.init_args.train_shards", str(data / "train-*.tar"), "--data.init_args.val_shards", "null",
                  "--data.init_args.batch_size", "4", "--trainer.max_steps", "2", "--trainer.default_root_dir", str(run)]):
        proc = subprocess.run([sys.executable, "-m", "lvdm.cli", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return next(run.rglob("last.ckpt"))


def clip(seed):
    return render_clip("red", "square", "right", np.random.default_rng(seed))


def test_sample_image_to_video_keeps_the_image(checkpoint, tmp_path):
    first = clip(0)[0]
    Image.fromarray(first).save(tmp_path / "first.png")
    out = tmp_path / "i2v"
    main(["sample", "--checkpoint", str(checkpoint), "--prompts", '["a red square moving right", "a red square moving up"]',
          "--image", str(tmp_path / "first.png"), "--out", str(out), "--steps", "2"])
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 2
    for video in videos:
        frames, _ = read_frames(str(video))
        assert frames.shape == (8, 32, 32, 3)
        # the pixel compressor's round trip is exact: only the mp4 encoding differs
        assert np.abs(frames[0].astype(int) - first.astype(int)).mean() < 3.0
        assert np.abs(frames[0].astype(int) - clip(1)[0].astype(int)).mean() > 10.0


def test_sample_video_extend_keeps_the_given_frames(checkpoint, tmp_path):
    start = clip(2)[:5]
    write_mp4(tmp_path / "start.mp4", start)
    out = tmp_path / "ext"
    main(["sample", "--checkpoint", str(checkpoint), "--prompts", '["a red square moving right"]',
          "--video", str(tmp_path / "start.mp4"), "--extend", "6", "--context_frames", "4", "--out", str(out),
          "--steps", "2"])
    frames, _ = read_frames(str(next(out.glob("*.mp4"))))
    assert frames.shape == (11, 32, 32, 3)
    assert np.abs(frames[:5].astype(int) - start.astype(int)).mean() < 3.0


@pytest.mark.parametrize("argv,fragment", [
    (["--image", "x.png", "--video", "y.mp4", "--extend", "2"], "not both"),
    (["--video", "y.mp4"], "--extend"),
    (["--extend", "3"], "--video"),
    (["--image", "missing.png"], "missing.png"),
    (["--loop", "true"], "--image"),
    (["--image", "x.png", "--height", "32"], "--height and --width together"),
    (["--video", "y.mp4", "--extend", "2", "--width", "32"], "--height and --width together"),
    (["--image", "x.png", "--height", "0", "--width", "32"], "must be positive"),
])
def test_sample_given_frames_clear_errors(checkpoint, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:  # the CLI turns user errors into a one-line message
        main(["sample", "--checkpoint", str(checkpoint), "--prompts", '["a red square"]', *argv])
    assert fragment in str(exit_info.value.code)


def test_read_images_folder_needs_one_per_prompt(tmp_path):
    for i in range(2):
        Image.fromarray(clip(i)[0]).save(tmp_path / f"{i}.png")
    assert read_images(tmp_path, 2).shape == (2, 3, 1, 32, 32)
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        read_images(tmp_path, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        read_images(tmp_path / "bad.png", 1)


def wide(frames):
    """Frames 32x32 → 48x64: the clip in the middle of a grey border (cropped away again by
    an aspect-preserving resize to 24x32, kept by a stretch)."""
    out = np.full((frames.shape[0], 48, 64, 3), 128, dtype=np.uint8)
    out[:, 8:40, 16:48] = frames
    return out


def pixels(tensor):
    """``[3, T, H, W]`` in [-1, 1] → uint8 ``[T, H, W, 3]`` as written to mp4."""
    return ((tensor.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def test_sample_image_is_resized_to_height_width(checkpoint, tmp_path):
    """--image with --height/--width: the image is resized (shorter side) and centre-cropped to
    the requested size (it used to be ignored: the video took the image's 48x64)."""
    image = wide(clip(0)[:1])[0]
    Image.fromarray(image).save(tmp_path / "wide.png")
    out = tmp_path / "i2v"
    main(["sample", "--checkpoint", str(checkpoint), "--prompts", '["a red square moving right"]',
          "--image", str(tmp_path / "wide.png"), "--height", "32", "--width", "32", "--out", str(out), "--steps", "2"])
    frames, _ = read_frames(str(next(out.glob("*.mp4"))))
    assert frames.shape == (8, 32, 32, 3)
    expected = pixels(fit_frames(frames_to_tensor(image[None]), (32, 32)))[0]
    assert np.abs(frames[0].astype(int) - expected.astype(int)).mean() < 3.0


def test_sample_without_size_keeps_the_image_size(checkpoint, tmp_path, capsys):
    """No --height/--width: the video has the image's size (as before), and says so."""
    Image.fromarray(wide(clip(0)[:1])[0]).save(tmp_path / "wide.png")
    out = tmp_path / "i2v"
    main(["sample", "--checkpoint", str(checkpoint), "--prompts", '["a red square moving right"]',
          "--image", str(tmp_path / "wide.png"), "--num_frames", "4", "--out", str(out), "--steps", "1"])
    assert read_frames(str(next(out.glob("*.mp4"))))[0].shape == (4, 48, 64, 3)
    assert "the videos are 48x64 (height x width), the size of the given frames" in capsys.readouterr().out


def test_sample_video_extend_is_resized_to_height_width(checkpoint, tmp_path):
    start = wide(clip(2)[:5])
    write_mp4(tmp_path / "start.mp4", start)
    out = tmp_path / "ext"
    main(["sample", "--checkpoint", str(checkpoint), "--prompts", '["a red square moving right"]',
          "--video", str(tmp_path / "start.mp4"), "--extend", "6", "--context_frames", "4", "--out", str(out),
          "--height", "24", "--width", "32", "--steps", "2"])
    frames, _ = read_frames(str(next(out.glob("*.mp4"))))
    assert frames.shape == (11, 24, 32, 3)
    given = pixels(read_video(tmp_path / "start.mp4", (24, 32)))
    assert np.abs(frames[:5].astype(int) - given.astype(int)).mean() < 3.0


def test_given_frames_resize_like_training_clips(tmp_path):
    """fit_frames is decode_clip's resize: shorter side covers the size, centre crop."""
    write_mp4(tmp_path / "wide.mp4", wide(clip(3)[:4]))
    for size in [(24, 32), (16, 16), (64, 96)]:
        ours = read_video(tmp_path / "wide.mp4", size)
        theirs = decode_clip(str(tmp_path / "wide.mp4"), 4, resolution=size)
        assert ours.shape == theirs.shape == (3, 4, *size)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="both positive"):
        fit_frames(torch.zeros(3, 1, 8, 8), (0, 8))


def test_read_images_folder_of_different_sizes_resized(tmp_path):
    Image.fromarray(clip(0)[0]).save(tmp_path / "0.png")
    Image.fromarray(wide(clip(1)[:1])[0]).save(tmp_path / "1.png")
    with pytest.raises(ValueError, match="differ in size"):
        read_images(tmp_path, 2)
    assert read_images(tmp_path, 2, (16, 16)).shape == (2, 3, 1, 16, 16)
