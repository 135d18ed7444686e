"""The examples run (tiny settings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_in_python_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, "examples/train_in_python.py", "--out", str(tmp_path), "--steps", "3", "--num_train", "32"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "probe accuracy over 16 videos" in proc.stdout
    assert len(list((tmp_path / "samples").glob("*.mp4"))) == 16


@pytest.mark.slow  # minutes: three fits and eight samplings of 64 prompts; the parts are tested one by one
def test_demo_curriculum_and_comparison_run_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "examples/demo.py", "--out", str(tmp_path), "--num_train", "64", "--image_steps", "2",
         "--video_steps", "4", "--compare", "--curve_every", "2"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialised" in proc.stdout and "inflated in time" in proc.stdout
    assert "image-to-video from the held-out first frames" in proc.stdout
    comparison = json.loads((tmp_path / "compare.json").read_text())
    # video phase checkpoints at 2 and 4 (the last) after 2 image steps; video-only at 2, 4 and 6 steps
    assert [p["steps"] for p in comparison["curriculum"]] == [4, 6]
    assert [p["steps"] for p in comparison["video_only"]] == [2, 4, 6]
    minutes = [p["minutes"] for p in comparison["video_only"]]
    assert minutes == sorted(minutes) and minutes[0] > 0
    assert "curriculum (image phase, then video) vs video-only at equal steps, measured now" in proc.stdout
    assert len(list((tmp_path / "samples_i2v").glob("*.mp4"))) == 64
    assert len(list((tmp_path / "first_frames").glob("*.png"))) == 64
