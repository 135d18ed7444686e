import tarfile

import pytest

from lvdm.data.shards import resolve_shards, write_shards


MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 10  # a signature is all write_shards reads


def _samples(n):
    for i in range(n):
        yield {"key": f"s{i:03d}", "mp4": MP4, "txt": f"caption {i}",
               "json": {"fps": 8, "frames": 8, "height": 32, "width": 32}}


@pytest.fixture
def shards(tmp_path):
    return write_shards(_samples(10), str(tmp_path / "d" / "train-%06d.tar"), max_count=3)


def test_write_shards_layout(shards):
    assert [p.rsplit("/", 1)[1] for p in shards] == [f"train-{i:06d}.tar" for i in range(4)]
    with tarfile.open(shards[0]) as tar:
        assert sorted(tar.getnames()) == sorted(f"s00{i}.{ext}" for i in range(3) for ext in ("mp4", "txt", "json"))
        assert tar.extractfile("s001.txt").read() == b"caption 1"


def test_resolve_forms(shards, tmp_path):
    d = tmp_path / "d"
    assert resolve_shards(str(d)) == shards
    assert resolve_shards(str(d / "train-*.tar")) == shards
    assert resolve_shards(str(d / "train-{000001..000002}.tar")) == shards[1:3]
    assert resolve_shards(shards[0]) == shards[:1]
    assert resolve_shards([shards[3], str(d / "train-00000[01].tar")]) == [shards[3], *shards[:2]]


@pytest.mark.parametrize("name", ["nope.tar", "train-{000003..000004}.tar", "zz-*.tar", "empty_dir"])
def test_missing_names_the_path(shards, tmp_path, name):
    (tmp_path / "d" / "empty_dir").mkdir()
    expected = "train-000004.tar" if "{" in name else name
    with pytest.raises(FileNotFoundError, match=expected.replace("*", r"\*")):
        resolve_shards([shards[0], str(tmp_path / "d" / name)])
