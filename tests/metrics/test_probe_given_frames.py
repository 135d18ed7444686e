"""eval probe --skip_frames: score only the generated frames of image-to-video samples."""

import numpy as np
import pytest

from lvdm.shapes.synthetic import render_clip
from lvdm.data.video import write_mp4
from lvdm.shapes.probe import probe_folder


def test_skip_frames_leaves_the_given_frame_out(tmp_path):
    clip = render_clip("red", "square", "right", np.random.default_rng(0))
    # a degenerate image-to-video sample: the given first frame, then a uniform grey blur
    degenerate = np.concatenate([clip[:1], np.full_like(clip[1:], 128)])
    write_mp4(tmp_path / "00000_a.mp4", degenerate)
    write_mp4(tmp_path / "00001_b.mp4", clip)
    (tmp_path / "prompts.txt").write_text("a red square moving right\na red square moving right\n")
    with_first = probe_folder(str(tmp_path))["results"]
    assert with_first[0]["predicted"]["direction"] == "right", "the given frame anchors a fake motion"
    generated_only = probe_folder(str(tmp_path), skip_frames=1)["results"]
    assert generated_only[0]["predicted"]["direction"] is None
    assert generated_only[1]["correct"] == {"colour": True, "shape": True, "direction": True}
    with pytest.raises(ValueError, match="none left"):
        probe_folder(str(tmp_path), skip_frames=8)
