"""`lvdm app`: the page, served on 127.0.0.1, generates a video through gradio's client."""

import shutil
import socket

import numpy as np
import pytest
import torch

from lvdm.checkpoints.load import build_module

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_hparams):
    torch.manual_seed(0)
    hparams = tiny_hparams(sample_shape=[4, 16, 16], fps=4)
    module = build_module(hparams)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 3,
                "callbacks": {}}, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generator_renders_the_same_video_as_the_module(checkpoint, tmp_path):
    from lvdm.generation.app import VideoGenerator
    from lvdm.data.video import read_frames
    from lvdm.generation import save_videos

    generator = VideoGenerator(str(checkpoint), out=str(tmp_path), device="cpu")
    assert generator.frame_multiple == 2 and generator.pixel_multiple == 4
    assert generator.frames_for(1.0) == 4 and generator.frames_for(0.1) == 2 and generator.frames_for(1.4) == 6
    paths = generator("a red square moving left\n\na blue circle", 1.0, 16, 12, 2, 3.0, 5)
    assert [p.name for p in paths] == ["00000_a_red_square_moving_left.mp4", "00001_a_blue_circle.mp4"]
    frames, fps = read_frames(paths[1])
    assert frames.shape == (4, 16, 12, 3) and fps == 4
    expected = generator.module.generate(["a red square moving left", "a blue circle"], num_frames=4, height=16,
                                         width=12, num_steps=2, guidance_scale=3.0, seed=5)
    (reference,) = save_videos(expected[1:], ["a blue circle"], tmp_path / "reference", fps=4)
    assert (read_frames(reference)[0] == frames).all()  # the same clip, the same encoder
    # image-to-video: the first frame is the image, resized to the requested size (pixel compressor)
    from PIL import Image

    ramp = np.zeros((8, 12, 3), dtype=np.uint8)
    ramp[..., 0] = np.linspace(40, 200, 12, dtype=np.uint8)[None]
    ramp[..., 1] = 120
    Image.fromarray(ramp).save(tmp_path / "first.png")
    (started,) = generator("a red square moving left", 1.0, 8, 12, 2, 3.0, 0, image=str(tmp_path / "first.png"))
    frames, _ = read_frames(started)
    assert frames.shape == (4, 8, 12, 3)
    (resized,) = generator("a red square moving left", 1.0, 16, 16, 2, 3.0, 0, image=str(tmp_path / "first.png"))
    assert read_frames(resized)[0].shape == (4, 16, 16, 3)  # the sliders' size, not the image's
    assert np.abs(frames[0].astype(float) - ramp).mean() < 6  # the given frame, through H.264
    with pytest.raises(ValueError, match="give one"):
        generator("a", 1.0, 16, 16, 2, 3.0, 0, loop=True)
    with pytest.raises(ValueError, match="multiple of 4"):
        generator("a", 1.0, 10, 16, 2, 3.0, 0)
    with pytest.raises(ValueError, match="at least one prompt"):
        generator(" \n", 1.0, 16, 16, 2, 3.0, 0)


def test_page_fields_set_the_negative_prompt_step_cache_and_guidance_interval(checkpoint, tmp_path):
    """The page's new fields build the same Request `lvdm sample` builds, checked by its rules."""
    from lvdm.generation.app import VideoGenerator

    generator = VideoGenerator(str(checkpoint), out=str(tmp_path), device="cpu")
    fields = ("a red square", 1.0, 16, 16, 2, 3.0, 0)
    request = generator.request(*fields, negative_prompt=" blurry ", step_cache=0.1, guidance_interval=(0.2, 0.8))
    assert (request.negative_prompt, request.step_cache, request.guidance_schedule.interval) == ("blurry", 0.1,
                                                                                                 (0.2, 0.8))
    default = generator.request(*fields)
    assert (default.negative_prompt, default.step_cache, default.guidance_schedule.interval) == (None, 0.0, (0.0, 1.0))
    assert generator.request(*fields, negative_prompt="  \n").negative_prompt is None  # a blank box: none
    assert generator.request(*fields, step_cache=0.1, step_cache_mode="first_block").step_cache_mode == "first_block"
    assert default.step_cache_mode == "teacache"
    for change, message in (({"step_cache": -0.5}, "step_cache threshold must be a finite number >= 0"),
                            ({"step_cache_mode": "fast"}, "step_cache_mode must be one of teacache, first_block"),
                            ({"guidance_interval": (0.9, 0.1)}, r"0 <= lo <= hi <= 1"),
                            ({"guidance_interval": (None, 1.0)}, "guidance interval must be two numbers"),
                            ({"negative_prompt": "x" * 501}, r"over the limit of 500 \(--max_prompt_chars\)")):
        with pytest.raises(ValueError, match=message):
            generator.request(*fields, **change)
    seen, generate = [], generator.module.generate
    generator.module.generate = lambda *args, **kw: seen.append(kw) or generate(*args, **kw)
    generator(*fields, negative_prompt="blurry", step_cache=0.1, guidance_interval=(0.2, 0.8),
              step_cache_mode="first_block")
    assert (seen[0]["negative_prompt"], seen[0]["step_cache"], seen[0]["guidance_schedule"].interval,
            seen[0]["step_cache_mode"]) == ("blurry", 0.1, (0.2, 0.8), "first_block")


def test_the_step_cache_rule_names_the_calibrated_thresholds():
    from lvdm.diffusion.cache_calibration import Calibration
    from lvdm.generation.app import cache_note

    assert "no calibration file" in cache_note(None)
    calibration = Calibration((1.0,), {"teacache": 0.21, "first_block": 0.47}, {"teacache": 2.3, "first_block": 2.3},
                              2.3, 20)
    assert cache_note(calibration) == ("this model's calibrated thresholds: teacache 0.21 (2.3x fewer), "
                                       "first_block 0.47 (2.3x fewer)")


def test_page_generates_a_video_through_the_client(checkpoint, tmp_path, monkeypatch):
    from gradio_client import Client

    from lvdm.generation.app import VideoGenerator, build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # gradio's copies stay under tmp_path

    generator = VideoGenerator(str(checkpoint), out=str(tmp_path / "videos"), device="cpu")
    page = build_app(generator)  # queued by build_app
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                allowed_paths=[str(generator.out)], quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        video, files, note = client.predict("a red square moving left\na green triangle moving up", 1.0, 16, 16, 2, 3.0, 0,
                                      None, False, "blurry", 0.1, 0.0, 1.0, "first_block", api_name="/generate")
        first = video["video"] if isinstance(video, dict) else video
        from lvdm.data.video import read_frames

        frames, fps = read_frames(first)
        assert frames.shape == (4, 16, 16, 3) and fps == 4
        assert len(files) == 2 and all(str(f).endswith(".mp4") for f in files)
        assert note == "2 video(s) of 4 frames (1.00 s)"
        assert len(list((tmp_path / "videos").rglob("*.mp4"))) == 2
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is not None:  # a real headless browser renders the page
            import subprocess

            dom = subprocess.run([browser, "--headless", "--no-sandbox", "--virtual-time-budget=5000", "--dump-dom",
                                  f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=60).stdout
            assert "Generate" in dom
    finally:
        page.close()
