"""The examples run (tiny settings)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_in_python_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, "examples/train_in_python.py", "--out", str(tmp_path), "--steps", "3", "--num_train", "32"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "probe accuracy over 16 videos" in proc.stdout
    assert len(list((tmp_path / "samples").glob("*.mp4"))) == 16
