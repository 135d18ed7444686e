import json

import numpy as np
import pytest

from lvdm.curation.ingest import ingest
from lvdm.curation.split import detect_scenes, plan_clips, split
from lvdm.data.media_probe import probe_media
from lvdm.data.schema import media_entry, read_manifest, read_rejects
from lvdm.data.shards import read_shard, write_shards
from lvdm.data.sample_media import encode_image, encode_video
from lvdm.data.video import read_frames

COLOURS = [(200, 30, 30), (20, 90, 20), (90, 200, 250), (40, 40, 40)]  # hue, saturation and luma all change


def scenes_video(lengths, height=24, width=96):
    """Flat-coloured scenes of the given lengths with a white square moving 2 px a frame (no wrap)."""
    out = []
    for scene, length in enumerate(lengths):
        for i in range(length):
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = COLOURS[scene % len(COLOURS)]
            x = 2 * i % (width - 8)
            frame[8:16, x : x + 8] = 255
            out.append(frame)
    return np.stack(out)


CUTS = [24, 16, 30]  # frames at 8 fps: 3 s, 2 s, 3.75 s
EXPECTED = [(0, 24), (24, 40), (40, 70)]


@pytest.mark.parametrize("ext", ["mp4", "webm"])
@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_detect_scenes_finds_the_cuts(ext, detector):
    scenes, fps = detect_scenes(encode_video(scenes_video(CUTS), ext), detector)
    assert scenes == EXPECTED and fps == 8


def test_one_scene_without_cuts():
    assert detect_scenes(encode_video(scenes_video([20]), "mp4"))[0] == [(0, 20)]


def test_plan_clips():
    assert plan_clips(EXPECTED, 8, min_seconds=2.5) == [(0, 24), (40, 70)]
    assert plan_clips(EXPECTED, 8, min_seconds=1, max_seconds=2) == [(0, 16), (16, 24), (24, 40), (40, 56), (56, 70)]
    assert plan_clips(EXPECTED, 8, min_seconds=0.5, chunk_seconds=1) == \
        [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 48), (48, 56), (56, 64)]
    assert plan_clips([(0, 5)], 8, min_seconds=1) == []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    (raw / "cuts.mp4").write_bytes(encode_video(scenes_video(CUTS), "mp4"))
    (raw / "cuts.txt").write_text("three scenes")
    (raw / "short.webm").write_bytes(encode_video(scenes_video([6]), "webm"))
    (raw / "short.txt").write_text("too short to keep")
    (raw / "photo.png").write_bytes(encode_image(scenes_video([1])[0], "png"))
    (raw / "photo.txt").write_text("an image")
    out = tmp_path_factory.mktemp("ds") / "ds"
    ingest(str(raw), str(out), workers=0)
    return out


def test_split_writes_clips_with_source_and_times(dataset, tmp_path, capsys):
    summary = split(str(dataset), str(tmp_path / "clips"), min_seconds=1.5, max_seconds=3, workers=0)
    assert (summary["videos"], summary["clips"], summary["images"], summary["rejected"]) == (2, 3, 1, 1)
    assert "split 2 videos into 3 clips" in capsys.readouterr().out
    assert read_rejects(tmp_path / "clips") == [("short", "no clip of at least min_seconds=1.5 (1 scenes, longest 0.75 s)")]
    samples = {s["__key__"]: s for shard in sorted((tmp_path / "clips").glob("*.tar")) for s in read_shard(shard)}
    assert sorted(samples) == ["cuts-0000", "cuts-0001", "cuts-0002", "photo"]
    expected = [(0, 24, 0), (24, 40, 1), (40, 64, 2)]  # the 3.75 s scene is cut at max_seconds=3
    for index, (start, end, colour) in enumerate(expected):
        sample = samples[f"cuts-{index:04d}"]
        meta = json.loads(sample["json"])
        assert (meta["source_key"], meta["start_frame"], meta["end_frame"]) == ("cuts", start, end)
        assert (meta["start"], meta["end"], meta["frames"], meta["duration"]) == (start / 8, end / 8, end - start, (end - start) / 8)
        assert meta["source"].endswith("cuts.mp4") and sample["txt"] == b"three scenes"
        ext, data = media_entry(sample)
        video, fps = read_frames(data)
        assert ext == "mp4" and fps == 8 and video.shape == (end - start, 24, 96, 3)
        info = probe_media(data, "mp4")
        assert info.frames == meta["frames"] and info.codec == "h264"
        # every frame is of the right scene (flat colour away from the square), none of its neighbours
        corner = video[:, 20:, :4].reshape(end - start, -1, 3).mean(axis=1)
        assert np.abs(corner - np.array(COLOURS[colour])).max() < 12
        # and the square is where frame `start + i` of the source put it
        assert [int(np.argmax(f[12, :, 0].astype(int) + f[12, :, 1] + f[12, :, 2] > 700)) for f in video[:3]] == \
            [2 * i % 88 for i in range(start - sum(CUTS[:colour]), start - sum(CUTS[:colour]) + 3)]
    assert "png" in samples["photo"] and "source_key" not in json.loads(samples["photo"]["json"])
    manifest = read_manifest(tmp_path / "clips")
    assert sorted(manifest["key"]) == sorted(samples)
    assert manifest.set_index("key").loc["cuts-0001", "start"] == 3.0


def test_fixed_chunks_without_detection(dataset, tmp_path):
    summary = split(str(dataset), str(tmp_path / "chunks"), detect=False, chunk_seconds=2, min_seconds=0.1,
                    max_size=48, workers=0)
    assert summary["clips"] == 4  # 70 frames → 4 chunks of 16 (the 6-frame video gives none)
    metas = [json.loads(s["json"]) for shard in (tmp_path / "chunks").glob("*.tar") for s in read_shard(shard)
             if "mp4" in s]
    assert sorted(m["start_frame"] for m in metas) == [0, 16, 32, 48]
    assert all(m["frames"] == 16 and (m["width"], m["height"]) == (48, 12) for m in metas)


def test_split_rejects_a_corrupt_video_and_keeps_going(dataset, tmp_path):
    good = list(read_shard(next(dataset.glob("*.tar"))))
    samples = [{"key": s["__key__"], **{e: s[e] for e in s if e in ("mp4", "webm", "png")},
                "txt": s["txt"], "json": json.loads(s["json"])} for s in good]
    broken = dict(samples[0], key="broken")
    broken["mp4"] = broken["mp4"][:300]
    write_shards(samples + [broken], str(tmp_path / "in" / "shard-%06d.tar"))
    summary = split(str(tmp_path / "in"), str(tmp_path / "out"), min_seconds=1.5, workers=0)
    reasons = dict(read_rejects(tmp_path / "out"))
    assert summary["clips"] == 3 and "broken" in reasons and "short" in reasons
    with pytest.raises(FileExistsError, match="not empty"):
        split(str(tmp_path / "in"), str(tmp_path / "out"), workers=0)
    with pytest.raises(ValueError, match="unknown detector"):
        split(str(tmp_path / "in"), str(tmp_path / "x"), detector="histogram")


def test_cli_split(dataset, tmp_path, capsys):
    from lvdm.cli import main

    main(["data", "split", "--source", str(dataset), "--out", str(tmp_path / "c"), "--detector", "adaptive",
          "--min_seconds", "1", "--workers", "0"])
    assert "split 2 videos into 3 clips" in capsys.readouterr().out


def test_split_refuses_to_write_over_its_input(dataset, tmp_path):
    with pytest.raises(ValueError, match="is the input folder"):
        split(str(dataset), str(dataset), workers=0)
    other = tmp_path / "other"
    other.mkdir()
    (other / "shard-000000.tar").write_bytes((dataset / "shard-000000.tar").read_bytes())
    with pytest.raises(ValueError, match="share file names"):
        split([str(dataset / "shard-000000.tar"), str(other / "shard-000000.tar")], str(tmp_path / "o"), workers=0)


def test_a_one_frame_video_passes_through_like_an_image(tmp_path, capsys):
    still = encode_video(scenes_video([1]), "mp4")
    write_shards([{"key": "probed", "mp4": still, "txt": "a still", "json": {"fps": 8, "frames": 1}},
                  {"key": "unprobed", "mp4": still, "txt": "a still", "json": {}},
                  {"key": "photo", "png": encode_image(scenes_video([1])[0], "png"), "txt": "a photo", "json": {}}],
                 str(tmp_path / "in" / "shard-%06d.tar"))
    summary = split(str(tmp_path / "in"), str(tmp_path / "out"), min_seconds=1, workers=0)
    assert (summary["clips"], summary["images"], summary["rejected"]) == (0, 3, 0)
    assert "3 stills passed through" in capsys.readouterr().out
    originals = {s["__key__"]: s for s in read_shard(tmp_path / "in" / "shard-000000.tar")}
    for sample in read_shard(tmp_path / "out" / "shard-000000.tar"):
        assert sample == originals[sample["__key__"]]
