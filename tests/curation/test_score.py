import json
import os
import tarfile

import numpy as np
import pandas as pd
import pytest

from conftest import image_sample, panning, texture, video_sample, write_dataset
from lvdm.curation.folder import read_samples
from lvdm.curation.score import score_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    samples = [
        video_sample("pan2", panning(64, 80, 6, 2, seed=1), "a red square moving left"),
        video_sample("still", np.repeat(texture(64, 80, seed=2)[None], 6, axis=0), "a blue circle moving up"),
        image_sample("img", texture(48, 48, seed=3), "a green triangle moving down"),
        video_sample("pan2_copy", panning(64, 80, 6, 2, seed=1), ""),
        {**video_sample("broken", panning(64, 80, 6, 2, seed=4)), "mp4": b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40},
    ]
    return write_dataset(tmp_path_factory.mktemp("raw"), samples, per_shard=2), samples


def _score(src, dst, **kwargs):
    return score_dataset(str(src), str(dst), scorers=["motion", "duplicates", "rules"],
                         options={"rules": {"min_short_side": 56, "min_duration": 0.5, "min_fps": 5}}, **kwargs)


def test_score_writes_fields_into_json_and_manifest_without_touching_media(dataset, tmp_path):
    src, samples = dataset
    summary = _score(src, tmp_path / "scored", workers=0)
    assert summary == {"samples": 5, "errors": 1, "output": str(tmp_path / "scored")}
    manifest = pd.read_parquet(tmp_path / "scored" / "manifest.parquet").set_index("key")
    assert list(manifest.index) == ["pan2", "still", "img", "pan2_copy", "broken"]
    assert manifest.loc["pan2", "motion"] == pytest.approx(2 * 256 / 64, rel=0.15)  # px/frame at 256 short side
    assert manifest.loc["still", "motion"] < 0.1 and manifest.loc["img", "motion"] == 0
    assert manifest.loc["pan2_copy", "duplicate_of"] == "pan2" and manifest.loc["still", "duplicate_of"] == ""
    assert list(manifest["rules_ok"]) == [True, True, False, True, True]  # the image is 48 px
    assert "decode" in manifest.loc["broken", "score_error"] and manifest.loc["pan2", "score_error"] == ""
    assert manifest.loc["broken", "rules_ok"]  # metadata checks need no decoding
    assert pd.isna(manifest.loc["broken", "motion"])
    assert (tmp_path / "scored" / "rejects.csv").read_text() == (src / "rejects.csv").read_text()
    for shard in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        with tarfile.open(src / shard) as a, tarfile.open(tmp_path / "scored" / shard) as b:
            assert a.getnames() == b.getnames()  # same entries, same order
    scored = read_samples(str(tmp_path / "scored" / "shard-000000.tar"), ["pan2"])["pan2"]
    assert scored["mp4"] == samples[0]["mp4"] and scored["txt"] == samples[0]["txt"].encode()
    meta = json.loads(scored["json"])
    assert meta["codec"] == "h264" and len(meta["phash"]) == 4 and meta["motion"] > 0  # kept + added
    assert "phash" not in manifest.columns  # lists stay in the json


def test_score_refuses_bad_requests(dataset, tmp_path):
    src, _ = dataset
    with pytest.raises(ValueError, match="unknown scorer"):
        score_dataset(str(src), str(tmp_path / "o"), scorers=["sharpness"])
    with pytest.raises(ValueError, match="needs a CLIP"):
        score_dataset(str(src), str(tmp_path / "o"), scorers=["clip_match"])
    with pytest.raises(ValueError, match="input folder"):
        score_dataset(str(src), str(src), scorers=["motion"])
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        score_dataset(str(tmp_path), str(tmp_path / "o"), scorers=["motion"])


def test_local_and_ray_engines_give_identical_manifests(dataset, tmp_path, local_ray):
    src, _ = dataset
    _score(src, tmp_path / "local", engine="local", workers=2, chunk_size=1)
    _score(src, tmp_path / "ray", engine="ray", chunk_size=1)
    local = pd.read_parquet(tmp_path / "local" / "manifest.parquet")
    pd.testing.assert_frame_equal(local, pd.read_parquet(tmp_path / "ray" / "manifest.parquet"))
    for shard in sorted(os.listdir(src)):
        if shard.endswith(".tar"):
            assert (tmp_path / "local" / shard).read_bytes() == (tmp_path / "ray" / shard).read_bytes()


def test_cli_data_score(dataset, tmp_path):
    from lvdm.cli import main

    src, _ = dataset
    main(["data", "score", "--source", str(src), "--out", str(tmp_path / "o"), "--scorers", "[rules, duplicates]",
          "--options", '{"rules": {"min_short_side": 60, "min_duration": null, "min_fps": 5}}', "--workers", "0"])
    manifest = pd.read_parquet(tmp_path / "o" / "manifest.parquet")
    assert list(manifest["rules_failed"]) == ["", "", "min_short_side", "", ""]
    assert list(manifest["duplicate_of"])[3] == "pan2"
