import json

import numpy as np
import pytest

from lvdm.shapes.synthetic import ALL_COMBOS, DIRECTIONS, SHAPES, caption, render_clip
from lvdm.data.video import write_mp4
from lvdm.shapes.probe import probe_folder, probe_frames, probe_videos


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """96 rendered clips (every combination twice) written as mp4, with prompts.txt."""
    folder = tmp_path_factory.mktemp("gt")
    rng = np.random.default_rng(7)
    prompts = []
    for i in range(96):
        combo = ALL_COMBOS[i % len(ALL_COMBOS)]
        write_mp4(folder / f"{i:03d}.mp4", render_clip(*combo, rng), fps=8)
        prompts.append(caption(*combo))
    (folder / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return folder, prompts


def test_ground_truth_through_mp4_scores_high(ground_truth, tmp_path):
    folder, _ = ground_truth
    result = probe_folder(str(folder), output=str(tmp_path / "probe.json"))
    for attribute in ("colour", "shape", "direction"):
        assert result["counts"][attribute]["total"] == 96
        assert result["accuracy"][attribute] >= 0.95, result["accuracy"]
    assert json.loads((tmp_path / "probe.json").read_text())["accuracy"] == result["accuracy"]


def test_wrong_prompts_score_zero(ground_truth):
    folder, prompts = ground_truth
    videos = sorted(folder.glob("*.mp4"))[:4]
    assert prompts[:4] == [f"a red square moving {d}" for d in ("left", "right", "up", "down")]
    result = probe_videos(videos, ["a green triangle moving " + d for d in ("right", "left", "down", "up")])
    assert result["accuracy"] == {"colour": 0.0, "shape": 0.0, "direction": 0.0, "all": 0.0}


def test_sidecar_prompts_and_partial_prompts(tmp_path):
    rng = np.random.default_rng(0)
    write_mp4(tmp_path / "a.mp4", render_clip("green", "circle", "down", rng))
    (tmp_path / "a.txt").write_text("a green blob")
    result = probe_folder(str(tmp_path))
    assert result["counts"]["colour"]["total"] == 1 and result["counts"]["shape"]["total"] == 0
    assert result["accuracy"]["colour"] == 1.0 and result["accuracy"]["shape"] is None
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        probe_folder(str(tmp_path), prompts=str(tmp_path / "nope.txt"))


def test_empty_frames_give_none():
    assert probe_frames(np.zeros((4, 32, 32, 3), np.uint8)) == {"colour": None, "shape": None, "direction": None}


def test_extra_colour_read_with_its_palette(ground_truth, tmp_path):
    """Magenta clips (every shape and direction) read as magenta with the five-colour palette, the
    old clips keep their colours under it, and the default palette does not score a magenta prompt."""
    five = ["red", "green", "blue", "yellow", "magenta"]
    rng = np.random.default_rng(3)
    combos = [("magenta", s, d) for s in SHAPES for d in DIRECTIONS]
    for i, combo in enumerate(combos):
        write_mp4(tmp_path / f"{i:03d}.mp4", render_clip(*combo, rng), fps=8)
    prompts = [caption(*c) for c in combos]
    result = probe_folder(str(tmp_path), prompts=_write(tmp_path / "p.txt", prompts), colours=five)
    assert result["accuracy"]["colour"] == 1.0 and result["accuracy"]["direction"] == 1.0
    assert probe_folder(str(ground_truth[0]), colours=five)["accuracy"]["colour"] >= 0.95
    default = probe_videos(sorted(tmp_path.glob("*.mp4")), prompts)
    assert default["counts"]["colour"]["total"] == 0 and default["counts"]["direction"]["total"] == 12
    with pytest.raises(ValueError, match="colours must be distinct names"):
        probe_folder(str(tmp_path), prompts=str(tmp_path / "p.txt"), colours=["purple"])


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)
