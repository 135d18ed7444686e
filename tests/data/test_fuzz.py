"""Fuzzing: mutated mp4 / webm / tar / json / caption bytes through the decoder, the shard
reader (the data module's pipeline) and ``lvdm data encode``. Allowed outcomes: a result, or a
``ValueError``/``KeyError`` naming the problem (the pipelines skip and count those). Not
allowed: any other exception (a crash), an example running past ``HANG_SECONDS`` (a hang), or
resident memory growing past ``MAX_RSS_GROWTH_MB``.

The default suite runs a few seconds' worth of examples; ``LVDM_FUZZ_EXAMPLES=N`` (or
``pytest -m slow``, which uses 2000) runs longer."""

import collections
import io
import json
import os
import resource
import signal
import tarfile
import warnings
from contextlib import contextmanager

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvdm.data.datamodule import VideoDataModule
from lvdm.data.stream_guard import DataGuard
from lvdm.curation.encode import encode_shards
from lvdm.shapes.synthetic import caption, render_clip
from lvdm.data.video import decode_clip, encode_mp4

EXAMPLES = int(os.environ.get("LVDM_FUZZ_EXAMPLES", "12"))
SLOW_EXAMPLES = int(os.environ.get("LVDM_FUZZ_SLOW_EXAMPLES", "2000"))
HANG_SECONDS = 20
MAX_RSS_GROWTH_MB = 1024
RUNS: collections.Counter = collections.Counter()  # examples run per target, and how they ended


def _webm(frames=8, size=16):
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as c:
        s = c.add_stream("libvpx", rate=8)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i, np.uint8), format="rgb24")))
        c.mux(s.encode())
    return buf.getvalue()


MP4 = encode_mp4(render_clip("red", "square", "left", np.random.default_rng(0)))
WEBM = _webm()


def _tar(samples) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, entries in samples:
            for ext, data in entries.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = _tar([(f"k{i}", {"mp4": MP4, "txt": caption("red", "square", "left").encode(),
                       "json": json.dumps({"fps": 8, "frames": 8}).encode()}) for i in range(3)])


@st.composite
def mutated(draw, seed: bytes):
    """``seed`` with some of: bytes overwritten, a chunk inserted or deleted, the tail cut off."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
        else:  # repeat a chunk (container box sizes and counts get confused)
            end = min(len(data), pos + draw(st.integers(1, 512)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@contextmanager
def bounded(what: str):
    """Fail on a hang (SIGALRM after HANG_SECONDS) or on resident memory growing too much."""
    def hang(signum, frame):
        raise AssertionError(f"{what}: no result after {HANG_SECONDS} s (hang)")

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert grown < MAX_RSS_GROWTH_MB, f"{what}: peak memory grew by {grown:.0f} MB"


def _fuzz_settings(examples):
    return settings(max_examples=examples, deadline=None, derandomize=False, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_decoder(data: bytes, random_start: bool):
    RUNS["decode"] += 1
    with bounded("decode_clip"):
        try:
            clip = decode_clip(data, 4, resolution=16, random_start=random_start, rng=np.random.default_rng(0))
        except (ValueError, KeyError):
            RUNS["decode: refused with a named error"] += 1
            return
    assert clip.shape == (3, 4, 16, 16) and bool(clip.isfinite().all())


def check_reader(tmp_path, data: bytes):
    RUNS["shard reader"] += 1
    shard = tmp_path / "fuzz-000000.tar"
    shard.write_bytes(data)
    dm = VideoDataModule(str(shard), str(shard), batch_size=2, num_frames=4, resolution=16,
                         data_guard=DataGuard(window=10_000, max_seconds_without_sample=0))
    dm.setup("fit")
    with bounded("VideoDataModule val pipeline"):
        for batch in dm.val_dataloader():
            assert batch["video"].shape[1:] == (3, 4, 16, 16) and all(isinstance(c, str) for c in batch["caption"])


def check_encode(tmp_path, data: bytes):
    RUNS["data encode"] += 1
    shard = tmp_path / "in" / "fuzz-000000.tar"
    shard.parent.mkdir(exist_ok=True)
    shard.write_bytes(data)
    with bounded("lvdm data encode"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            encode_shards(str(shard), str(tmp_path / "out"), num_frames=4, resolution=16)
        except (ValueError, KeyError, OSError, tarfile.TarError) as err:  # a shard that cannot be read at all
            assert "fuzz-000000.tar" in str(err) or isinstance(err, (tarfile.TarError, OSError)), err


def _sample_tar(draw_caption: bytes, draw_json: bytes) -> bytes:
    return _tar([("k0", {"mp4": MP4, "txt": draw_caption, "json": draw_json})])


def _run_all(examples):
    @_fuzz_settings(examples)
    @given(data=mutated(MP4), random_start=st.booleans())
    def mp4(data, random_start):
        check_decoder(data, random_start)

    @_fuzz_settings(examples)
    @given(data=mutated(WEBM), random_start=st.booleans())
    def webm(data, random_start):
        check_decoder(data, random_start)

    return mp4, webm


def test_fuzz_decoder_mp4_and_webm():
    for run in _run_all(EXAMPLES):
        run()


@pytest.fixture
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def test_fuzz_shard_reader_and_encode(scratch):
    @_fuzz_settings(EXAMPLES)
    @given(data=mutated(TAR))
    def tar_bytes(data):
        check_reader(scratch, data)

    @_fuzz_settings(EXAMPLES)
    @given(text=st.binary(max_size=64), meta=mutated(b'{"fps": 8, "frames": 8}') | st.binary(max_size=32))
    def caption_and_json(text, meta):
        data = _sample_tar(text, meta)
        check_reader(scratch, data)
        check_encode(scratch, data)

    tar_bytes()
    caption_and_json()


@pytest.mark.slow
def test_fuzz_long(scratch):
    """The long run: ``SLOW_EXAMPLES`` examples per target (run with -s for the counts)."""
    import time

    RUNS.clear()
    start = time.perf_counter()
    for run in _run_all(SLOW_EXAMPLES):
        run()

    @_fuzz_settings(SLOW_EXAMPLES)
    @given(data=mutated(TAR))
    def tar_bytes(data):
        check_reader(scratch, data)

    @_fuzz_settings(SLOW_EXAMPLES // 4)
    @given(text=st.binary(max_size=64), meta=mutated(b'{"fps": 8, "frames": 8}') | st.binary(max_size=32))
    def caption_and_json(text, meta):
        data = _sample_tar(text, meta)
        check_reader(scratch, data)
        check_encode(scratch, data)

    tar_bytes()
    caption_and_json()
    print(f"\nfuzz: {dict(RUNS)} in {time.perf_counter() - start:.0f} s; 0 crashes, 0 hangs")
