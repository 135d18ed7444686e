import io
import json
import tarfile

import numpy as np
import pytest

from lvdm.shapes.synthetic import (
    ALL_COMBOS, COLOURS, HELD_OUT, OBJECT_SIZE, SHAPES, caption, parse_caption, render_clip,
    write_synthetic_dataset,
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
