import io
import json
import tarfile

import numpy as np
import pytest

from lvdm.shapes.synthetic import (
    ALL_COMBOS, COLOURS, EXTRA_COLOURS, EXTRA_HELD_OUT, HELD_OUT, OBJECT_SIZE, SHAPES, caption, palette,
    parse_caption, render_clip, write_synthetic_dataset,
)


def _read_split(paths):
    """(caption, json) per sample of the given shards, in order."""
    out = []
    for path in paths:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for key in dict.fromkeys(name.rsplit(".", 1)[0] for name in members):
                text = tar.extractfile(members[f"{key}.txt"]).read().decode()
                meta = json.load(io.BytesIO(tar.extractfile(members[f"{key}.json"]).read()))
                out.append((text, meta))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(str(tmp_path_factory.mktemp("synth")), num_train=120, num_val=20,
                                   shard_size=50, seed=3)


def test_parse_caption():
    assert parse_caption(caption("red", "square", "left")) == {"colour": "red", "shape": "square", "direction": "left"}
    assert parse_caption("Two BLUE Circles, moving up quickly!") == {"colour": "blue", "shape": "circle", "direction": "up"}
    assert parse_caption("a yellow thing") == {"colour": "yellow", "shape": None, "direction": None}


def test_held_out_absent_from_train_and_val_matches_prompts(dataset):
    assert len(dataset["train_shards"]) == 3 and dataset["num_train"] == 120
    train = _read_split(dataset["train_shards"])
    assert len(train) == 120
    combos = {tuple(parse_caption(t).values()) for t, _ in train}
    assert not combos & set(HELD_OUT) and len(combos) > 30
    val = _read_split(dataset["val_shards"])
    prompts = open(dataset["val_prompts"]).read().splitlines()
    assert prompts == [t for t, _ in val] and len(prompts) == 20
    assert [tuple(parse_caption(p).values()) for p in prompts[:8]] == list(HELD_OUT)
    meta = val[0][1]
    assert (meta["fps"], meta["frames"], meta["height"], meta["width"]) == (8, 8, 32, 32)


def test_no_holdout_uses_all_combos(tmp_path):
    summary = write_synthetic_dataset(str(tmp_path), num_train=4, num_val=48, holdout=False)
    prompts = open(summary["val_prompts"]).read().splitlines()
    assert {tuple(parse_caption(p).values()) for p in prompts} == set(ALL_COMBOS)


@pytest.mark.parametrize("shape, area", [("square", 144), ("circle", np.pi * 36), ("triangle", 72)])
def test_object_inside_every_frame_and_starts_vary(shape, area):
    rng = np.random.default_rng(0)
    starts = set()
    for direction in ("left", "right", "up", "down"):
        for _ in range(5):
            clip = render_clip("blue", shape, direction, rng)
            assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
            coverage = clip[..., 2].astype(float) / COLOURS["blue"][2]
            # the full (anti-aliased) area is visible in every frame: nothing is cut off
            np.testing.assert_allclose(coverage.sum(axis=(1, 2)), area, rtol=0.03)  # 4x supersampling: triangle 73.5
            ys, xs = np.nonzero(coverage[0] > 0.5)
            starts.add((xs.min(), ys.min()))
            assert 0 < xs.max() - xs.min() + 1 <= OBJECT_SIZE + 1
    assert len(starts) > 10
    assert shape in SHAPES


def test_motion_direction_and_speed():
    clip = render_clip("red", "square", "up", np.random.default_rng(1))
    rows = [np.nonzero(f[..., 0].max(axis=1) > 115)[0].min() for f in clip]
    assert np.all(np.diff(rows) == -2)


def test_default_colours_list_writes_the_default_world(tmp_path):
    default = write_synthetic_dataset(str(tmp_path / "a"), num_train=12, num_val=8, seed=2)
    named = write_synthetic_dataset(str(tmp_path / "b"), num_train=12, num_val=8, seed=2, colours=list(COLOURS))
    for split in ("train_shards", "val_shards"):
        assert _read_split(default[split]) == _read_split(named[split])
    assert (default["train_combos"], default["val_combos"]) == (40, 8)
    assert open(default["val_prompts"]).read() == open(named["val_prompts"]).read()


def test_extra_colour_dataset_holds_out_its_combinations(tmp_path):
    summary = write_synthetic_dataset(str(tmp_path), num_train=40, num_val=8, colours=["magenta"])
    assert (summary["train_combos"], summary["val_combos"]) == (8, 4)
    magenta = ["red", "green", "blue", "yellow", "magenta"]
    train = {tuple(parse_caption(t, magenta).values()) for t, _ in _read_split(summary["train_shards"])}
    assert {c[0] for c in train} == {"magenta"} and not train & set(EXTRA_HELD_OUT)
    prompts = open(summary["val_prompts"]).read().splitlines()
    assert [tuple(parse_caption(p, magenta).values()) for p in prompts] == list(EXTRA_HELD_OUT) * 2
    # a caption's colour outside the palette is not read; the default palette stays the four colours
    assert parse_caption(prompts[0])["colour"] is None and list(palette()) == list(COLOURS)
    clip = render_clip("magenta", "square", "left", np.random.default_rng(0))
    assert tuple(clip.reshape(-1, 3).max(axis=0)) == EXTRA_COLOURS["magenta"]


@pytest.mark.parametrize("colours", [["purple"], [], ["red", "red"]])
def test_bad_colours_name_the_choices(tmp_path, colours):
    with pytest.raises(ValueError, match="colours must be distinct names from .*magenta"):
        write_synthetic_dataset(str(tmp_path), num_train=1, num_val=1, colours=colours)
