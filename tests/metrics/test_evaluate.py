"""lvdm eval fvd / clipscore through the CLI, on synthetic shards and mp4 folders."""

import json

import numpy as np
import pytest
import torch

from lvdm.cli import main
from lvdm.shapes.synthetic import write_synthetic_dataset
from lvdm.metrics.evaluate import iter_videos
from lvdm.metrics.fvd import FrechetVideoDistance
from lvdm.generation import save_videos


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_synthetic_dataset(str(root / "shapes"), num_train=1, num_val=3, num_frames=9)
    noise = torch.rand(3, 3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    save_videos(noise, ["a red square moving left"] * 3, root / "noise")
    return root


def test_eval_fvd_cli_writes_result_with_settings(data, tmp_path):
    out = tmp_path / "fvd.json"
    main(["eval", "fvd", "--real", str(data / "shapes/val-*.tar"), "--fake", str(data / "noise"),
          "--num_videos", "2", "--num_frames", "9", "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["real"]["num_videos"] == result["fake"]["num_videos"] == 2
    assert result["num_frames"] == 9 and len(result["i3d_weights_sha256"]) == 64
    # the same videos through the metric directly
    metric = FrechetVideoDistance()
    for source, real in ((str(data / "shapes/val-*.tar"), True), (str(data / "noise"), False)):
        videos = torch.stack([v for _, v, _ in iter_videos(source, 9, limit=2)])
        metric.update(videos, real=real)
    assert result["fvd"] == pytest.approx(metric.compute().item(), rel=1e-9)
    assert result["fvd"] > 100


def test_eval_fvd_errors(data):
    def refused(*argv):  # the CLI prints a user error as one line and exits non-zero
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "fvd", "--real", *argv])
        return str(exit_info.value.code)

    noise = str(data / "noise")
    assert "at least 9 frames" in refused(noise, "--fake", noise, "--num_frames", "8")
    assert "exactly one of fake" in refused(noise)
    assert "fewer than the 16 needed" in refused(noise, "--fake", noise, "--num_frames", "16")
    assert "nothing_here" in refused(str(data / "nothing_here"), "--fake", noise, "--num_frames", "9")


def test_eval_clipscore_cli(data, clip_dir, tmp_path):
    out = tmp_path / "clip.json"
    main(["eval", "clipscore", "--videos", str(data / "noise"), "--clip", str(clip_dir), "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["num_videos"] == 3 and result["clip"] == str(clip_dir)
    # the same videos and prompts through the metric directly (the CLI's value is clamped at 0,
    # so a bound would pass whatever it scored)
    from lvdm.metrics.clipscore import VideoCLIPScore

    metric = VideoCLIPScore(pretrained=str(clip_dir))
    for _, video, prompt in iter_videos(str(data / "noise"), None, None):
        metric.update(video.unsqueeze(0), [prompt])
    assert np.isfinite(result["clipscore"])
    assert result["clipscore"] == pytest.approx(metric.compute().item(), rel=1e-6)
