import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from lvdm.data.datamodule import VideoDataModule
from lvdm.curation.encode import encode_shards
from lvdm.data.schema import (
    InvalidSampleError, assign_keys, canonical_extension, check_key, check_media, key_from_path, manifest_row,
    media_entry, read_manifest, read_rejects, sniff_media, write_manifest, write_rejects,
)
from lvdm.data.shards import ShardWriter, write_shards
from lvdm.data.sample_media import encode_image, encode_video, frames

MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 8


def _sample(key, ext="mp4", data=MP4):
    return {"key": key, ext: data, "txt": "a caption", "json": {"fps": 8}}


def test_keys_from_paths_are_safe_and_unique():
    paths = ["clips/a b.mp4", "clips/a_b.mp4", "clips/v1.2.final.webm", "x.mp4", "x.webm", "日本/映像.mp4", "y"]
    keys = assign_keys(paths)
    assert len(set(keys)) == len(keys)
    assert all(check_key(k) == k for k in keys)
    assert keys[2] == "clips__v1_2_final" and keys[6] == "y"
    # colliding keys carry a hash of the path: the same whatever the input order
    assert keys[0].startswith("clips__a_b-") and keys[1].startswith("clips__a_b-") and keys[3].startswith("x-")
    assert dict(zip(paths, keys)) == dict(zip(paths[::-1], assign_keys(paths[::-1])))
    assert len(assign_keys(["d/" + "z" * 300 + ".mp4"])[0]) <= 100
    with pytest.raises(ValueError, match="more than once"):
        assign_keys(["a.mp4", "a.mp4"])
    assert key_from_path("a/b/.hidden") == "a__b___hidden"


def test_assign_keys_resolves_a_suffixed_key_meeting_a_plain_one():
    first = assign_keys(["a.mp4", "a.webm"])[0]  # "a-<hash>"
    keys = assign_keys(["a.mp4", "a.webm", first + ".mp4"])
    assert len(set(keys)) == 3 and all(check_key(k) for k in keys)


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "a\\b", "a\nb", None])
def test_check_key_refuses_keys_webdataset_would_split(key):
    with pytest.raises(InvalidSampleError, match="key"):
        check_key(key)


def test_sniff_and_canonical_extension():
    rgb = frames(4, 16, 16)
    assert sniff_media(encode_video(rgb, "mp4")) == "isobmff"
    assert sniff_media(encode_video(rgb, "webm")) == sniff_media(encode_video(rgb, "mkv")) == "matroska"
    assert sniff_media(encode_video(rgb, "avi")) == "avi"
    assert sniff_media(encode_video(rgb, "gif")) == "gif"
    for ext, family in (("png", "png"), ("jpg", "jpeg"), ("webp", "webp")):
        assert sniff_media(encode_image(rgb[0], ext)) == family
    assert sniff_media(b"hello, I am text") is None
    webm = encode_video(rgb, "webm")
    assert canonical_extension(webm, "webm") == "webm" and canonical_extension(webm, "mp4") == "mkv"
    assert canonical_extension(encode_image(rgb[0], "jpg"), ".JPEG") == "jpeg"
    assert canonical_extension(b"text") is None


@pytest.mark.parametrize("sample, match", [
    (_sample("a.b"), "contains '.'"),
    (_sample("dir/a"), "contains '/'"),
    (_sample("e", data=b""), "empty"),
    (_sample("t", data=b"just some text, not a video"), "not a media file"),
    (_sample("w", data=b"\x1a\x45\xdf\xa3" + b"\x00" * 20), r"holds a matroska file; store it as \.mkv"),
    (_sample("j", ext="png", data=b"\xff\xd8\xff\xe0" + b"\x00" * 20), "holds a jpeg file"),
    ({"key": "n", "txt": "", "json": {}}, "exactly one media entry"),
    ({**_sample("two"), "webm": b"\x1a\x45\xdf\xa3"}, "exactly one media entry"),
    ({"key": "m", "mp4": MP4, "json": {}}, r"missing \['txt'\]"),
])
def test_write_shards_refuses_with_the_key(tmp_path, sample, match):
    with pytest.raises(InvalidSampleError, match=match):
        write_shards([_sample("fine"), sample], str(tmp_path / "s-%06d.tar"))
    assert not list(tmp_path.glob("*.tar")) and not list(tmp_path.glob("*.partial"))  # nothing half-written


def test_write_shards_refuses_duplicate_keys_across_shards(tmp_path):
    with pytest.raises(InvalidSampleError, match="'k0' is written twice"):
        write_shards([_sample("k0"), _sample("k1"), _sample("k0")], str(tmp_path / "s-%06d.tar"), max_count=2)
    assert [p.name for p in tmp_path.iterdir()] == ["s-000000.tar"]  # the finished shard stays


def test_shard_writer_reports_shards_and_keeps_extensions(tmp_path):
    webm, png = encode_video(frames(3, 8, 8), "webm"), encode_image(frames(1, 8, 8)[0], "png")
    with ShardWriter(str(tmp_path / "shard-%06d.tar"), max_count=2, start_index=5) as sink:
        where = [sink.write(s) for s in (_sample("a"), _sample("b", "webm", webm), _sample("c", "png", png))]
    assert [p.rsplit("/", 1)[1] for p in where] == ["shard-000005.tar", "shard-000005.tar", "shard-000006.tar"]
    assert sink.paths == [str(tmp_path / "shard-000005.tar"), str(tmp_path / "shard-000006.tar")]
    with tarfile.open(sink.paths[0]) as tar:
        assert sorted(tar.getnames()) == ["a.json", "a.mp4", "a.txt", "b.json", "b.txt", "b.webm"]
    read = list(wds.WebDataset(sink.paths, shardshuffle=False))
    assert [media_entry(s)[0] for s in read] == ["mp4", "webm", "png"]


def test_check_media_names_the_key():
    with pytest.raises(InvalidSampleError, match="'clip7'.*not a media extension"):
        check_media("txt", b"x", "clip7")


def test_manifest_and_rejects_round_trip(tmp_path):
    rows = [manifest_row("a", "/x/shard-000000.tar", {"fps": 8.0, "kind": "video", "tags": ["x"], "n": 1}),
            manifest_row("b", "shard-000001.tar", {"fps": 24.0, "kind": "image", "n": "two"})]
    assert rows[0] == {"key": "a", "shard": "shard-000000.tar", "fps": 8.0, "kind": "video", "n": 1}
    frame = read_manifest(write_manifest(rows, tmp_path / "manifest.parquet").parent)
    assert list(frame.columns) == ["key", "shard", "fps", "kind", "n"]
    assert frame["n"].tolist() == ["1", "two"]  # a mixed column is stored as text rather than failing
    assert len(read_manifest(write_manifest([], tmp_path / "empty.parquet"))) == 0
    write_rejects([("a,b.mp4", "empty (0 bytes)")], tmp_path / "rejects.csv")
    assert read_rejects(tmp_path) == [("a,b.mp4", "empty (0 bytes)")]


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    """One shard with a clip in each container and three images, odd sizes."""
    root = tmp_path_factory.mktemp("mixed")
    samples = []
    for i, ext in enumerate(("mp4", "webm", "mkv", "avi", "mov", "gif")):
        h, w = (18, 24) if ext in ("mkv", "avi") else (17, 23)
        samples.append({"key": f"v_{ext}", ext: encode_video(frames(10, h, w, seed=i), ext), "txt": ext,
                        "json": {"fps": 8, "frames": 10, "height": h, "width": w}})
    for ext in ("png", "jpg", "webp"):
        samples.append({"key": f"i_{ext}", ext: encode_image(frames(1, 19, 13)[0], ext), "txt": ext,
                        "json": {"fps": 0, "frames": 1, "height": 19, "width": 13}})
    write_shards(samples, str(root / "shard-%06d.tar"))
    return root


def test_video_datamodule_reads_every_extension(mixed_shards, caplog):
    dm = VideoDataModule(str(mixed_shards), str(mixed_shards), batch_size=3, num_frames=4, resolution=(8, 12))
    dm.setup("fit")
    with caplog.at_level("WARNING", logger="lvdm.data"):
        batches = list(dm.val_dataloader())
    assert "'i_png'" in caplog.text and "too_short" in caplog.text  # an image is a 1-frame clip: too short for 4 frames
    keys = [k for b in batches for k in b["key"]]
    assert keys == [f"v_{e}" for e in ("mp4", "webm", "mkv", "avi", "mov", "gif")]
    assert dm.skipped == 3
    assert all(b["video"].shape == (3, 3, 4, 8, 12) and b["video"].max() > 0.9 for b in batches)

    images = VideoDataModule(str(mixed_shards), str(mixed_shards), batch_size=9, num_frames=1, resolution=8)
    images.setup("fit")
    (batch,) = list(images.val_dataloader())
    assert batch["video"].shape == (9, 3, 1, 8, 8) and images.skipped == 0
    assert batch["caption"][-3:] == ["png", "jpg", "webp"]


def test_encode_reads_every_extension(mixed_shards, tmp_path):
    summary = encode_shards(str(mixed_shards), str(tmp_path / "latents"), num_frames=1, resolution=8)
    assert summary["encoded"] == 9 and summary["skipped"] == 0
    read = list(wds.WebDataset(summary["shards"], shardshuffle=False))
    assert [s["__key__"] for s in read][-3:] == ["i_png", "i_jpg", "i_webp"]
    assert all(json.loads(s["json"])["latent_shape"] == [3, 1, 8, 8] for s in read)
    assert all(np.isfinite(np.load(io.BytesIO(s["latent.npy"]))).all() for s in read)


def test_random_start_in_a_container_without_frame_count():
    """webm lists no frame count: the window is still random, and a real run of consecutive
    frames (the square moves 2 px a frame)."""
    from lvdm.data.video import decode_clip

    webm = encode_video(frames(20, 16, 48), "webm")
    starts = set()
    for seed in range(6):
        clip = decode_clip(webm, 4, random_start=True, rng=np.random.default_rng(seed))
        assert clip.shape == (3, 4, 16, 48)
        column = int(np.flatnonzero(clip[:, 0, 6].min(0).values.numpy() > 0.85)[0])  # the white square's left edge
        starts.add(column // 2)
    assert len(starts) > 1 and max(starts) <= 16


def test_one_unbounded_shard_under_a_plain_name_read_back_in_order(tmp_path):
    from lvdm.data.shards import read_shard

    with ShardWriter(str(tmp_path / "train-7.tar"), max_count=None) as sink:
        for i in range(5):
            sink.write(_sample(f"k{i}"))
    assert sink.paths == [str(tmp_path / "train-7.tar")]
    read = list(read_shard(sink.paths[0]))
    assert [s["__key__"] for s in read] == [f"k{i}" for i in range(5)]
    assert read[0]["mp4"] == MP4 and read[0]["txt"] == b"a caption" and json.loads(read[0]["json"]) == {"fps": 8}
