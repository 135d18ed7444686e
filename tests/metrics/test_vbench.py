"""``lvdm eval vbench``: VBench-style dimensions on known answers, tiny random models, offline."""

import json

import numpy as np
import pytest

from lvdm.data.video import write_mp4
from lvdm.metrics import vbench as vb


def moving_square(frames: int = 8, size: int = 32, step: int = 3) -> np.ndarray:
    """A white square on grey moving right by ``step`` pixels a frame: ``uint8 [T, H, W, 3]``."""
    video = np.full((frames, size, size, 3), 96, np.uint8)
    for t in range(frames):
        x = 2 + step * t
        video[t, 8:20, x : x + 8] = 255
    return video


def still(frames: int = 8, size: int = 32) -> np.ndarray:
    return np.repeat(moving_square(1, size), frames, axis=0)


def shuffled(video: np.ndarray) -> np.ndarray:
    return video[[0, 5, 2, 7, 1, 6, 3, 4]]


def test_flickering_still_video_is_one():
    assert vb.temporal_flickering(still()) == 1.0
    assert vb.temporal_flickering(still()[:1]) == 1.0


def test_flickering_formula_and_shuffled_frames_score_lower():
    video = np.zeros((2, 4, 4, 3), np.uint8)
    video[1] = 51  # every pixel changes by 51: (255 - 51) / 255 = 0.8
    assert vb.temporal_flickering(video) == pytest.approx(0.8, rel=1e-12)
    original = vb.temporal_flickering(moving_square())
    assert original < 1.0
    assert vb.temporal_flickering(shuffled(moving_square())) < original


def test_command_reads_mp4s_prints_a_table_and_writes_json(tmp_path, capsys):
    write_mp4(tmp_path / "videos" / "a_still.mp4", still())
    write_mp4(tmp_path / "videos" / "b_moving.mp4", moving_square())
    from lvdm.cli import main

    main(["eval", "vbench", "--videos", str(tmp_path / "videos"), "--dimensions", "[temporal_flickering]",
          "--out", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    still_row, moving_row = report["videos"]
    assert still_row["temporal_flickering"] == 1.0  # mp4 coding keeps a still video still
    assert moving_row["temporal_flickering"] < 1.0
    assert report["scores"]["temporal_flickering"] == pytest.approx(
        (1.0 + moving_row["temporal_flickering"]) / 2, rel=1e-9)
    assert "temporal_flickering" in capsys.readouterr().out


def test_unknown_dimension_and_missing_folder_fail_naming_them(tmp_path):
    with pytest.raises(ValueError, match="motion_blur.*temporal_flickering"):
        vb.vbench(str(tmp_path), dimensions=["motion_blur"])
    with pytest.raises(NotADirectoryError, match="nowhere"):
        vb.vbench(str(tmp_path / "nowhere"), dimensions=["temporal_flickering"])
