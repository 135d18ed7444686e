"""Image bombs: a tiny file whose header claims a huge frame is refused from its header, before
anything decodes a pixel (ingest's probe and the score/caption frame loader alike)."""

import struct
import zlib

import av
import pytest
from PIL import ImageFile

from lvdm.curation.frames import load_clip_frames
from lvdm.curation.ingest import ingest
from lvdm.data.media_probe import ProbeError, probe_media
from lvdm.data.schema import read_rejects
from lvdm.data.video import VideoDecodeError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width=16000, height=16000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width x height`` black pixels: ~30 KB on disk, 768 MB as RGB."""
    stream, row = zlib.compressobj(9), b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(stream.compress(row) for _ in range(height)) + stream.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def bomb_gif(width=16000, height=16000) -> bytes:
    """A GIF whose logical screen is ``width x height`` (one 1x1 image in it)."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00" + b";")


@pytest.fixture()
def no_decoding(monkeypatch):
    """Any pixel decoding (Pillow's load, anything PyAV opens) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the bomb reached a decoder")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(av, "open", refuse)


@pytest.mark.parametrize("make, ext", [(bomb_png, "png"), (bomb_gif, "gif")])
def test_probe_refuses_a_bomb_from_its_header(make, ext, no_decoding):
    with pytest.raises(ProbeError, match="8000x8000 = 64000000 pixels, more than max_pixels=16777216"):
        probe_media(make(8000, 8000), ext)
    with pytest.raises(ProbeError, match="decompression-bomb limit .* refused before decoding"):
        probe_media(make(16000, 16000), ext, max_pixels=10**9)


@pytest.mark.parametrize("make, ext", [(bomb_png, "png"), (bomb_gif, "gif")])
def test_the_frame_loader_refuses_a_bomb_from_its_header(make, ext, no_decoding):
    with pytest.raises(VideoDecodeError, match="'bomb': image frames are 8000x8000 = 64000000 pixels"):
        load_clip_frames(make(8000, 8000), ext, "bomb", lambda n: [0])
    with pytest.raises(VideoDecodeError, match="'bomb': .* refused before decoding"):
        load_clip_frames(make(), ext, "bomb", lambda n: [0])


def test_ingest_rejects_a_bomb_with_a_reason_without_decoding_it(tmp_path, no_decoding):
    import resource

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "bomb.png").write_bytes(bomb_png())
    (raw / "bomb.txt").write_text("a black square")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = ingest(str(raw), str(tmp_path / "out"), workers=0)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert summary["accepted"] == 0 and summary["rejected"] == 1
    [(path, reason)] = read_rejects(tmp_path / "out" / "rejects.csv")
    assert path.endswith("bomb.png") and "refused before decoding" in reason
    assert grown_mb < 200  # loose: decoding it would take 256 MB (greyscale) to 768 MB (RGB)
