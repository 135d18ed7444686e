"""DataGuard: a stream that decodes (almost) nothing stops with an error naming the reason and
the shards instead of spinning forever; SIGTERM stops a stuck loader; skips are counted by
reason (truncated tars included); decoding is bounded in frames and pixels."""

import io
import signal
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest
import torch

from lvdm.data import video as video_mod
from lvdm.data.datamodule import VideoDataModule
from lvdm.data.stream_guard import DataGuard, DataStreamError
from lvdm.data.shards import write_shards
from lvdm.shapes.synthetic import caption, render_clip
from lvdm.data.video import VideoTooLargeError, decode_clip, encode_mp4


def _clips(prefix, n, corrupt=False, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        mp4 = encode_mp4(render_clip("red", "square", "left", rng))
        yield {"key": f"{prefix}{i:03d}", "mp4": mp4[:200] if corrupt else mp4,
               "txt": caption("red", "square", "left"), "json": {"fps": 8}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    write_shards(_clips("g", 8), str(root / "good-%06d.tar"), max_count=8)
    write_shards(_clips("b", 8, corrupt=True), str(root / "bad-%06d.tar"), max_count=4)
    data = (root / "good-000000.tar").read_bytes()
    (root / "truncated-000000.tar").write_bytes(data[: len(data) // 2])
    (root / "broken-000000.tar").write_bytes(data[:700])  # cut inside the first member
    (root / "empty-000000.tar").write_bytes(b"\0" * 1024)  # a valid tar with no member
    return root


def _first_batch(dm, timeout=60):
    dm.setup("fit")
    t0 = time.monotonic()
    with pytest.raises(DataStreamError) as err:
        next(iter(dm.train_dataloader()))
    assert time.monotonic() - t0 < timeout
    return str(err.value)


def test_all_corrupt_stream_stops_naming_reason_and_shards(shards):
    dm = VideoDataModule(str(shards / "bad-*.tar"), batch_size=2, data_guard=DataGuard(window=20))
    message = _first_batch(dm)
    assert "of the last 20 samples were skipped" in message
    assert "commonest reason: corrupt_video" in message and "bad-000000.tar" in message and "bad-000001.tar" in message
    assert dm.skip_reasons["corrupt_video"] >= 11


def test_num_frames_above_every_clip_stops_as_too_short(shards):
    dm = VideoDataModule(str(shards / "good-*.tar"), batch_size=2, num_frames=64, data_guard=DataGuard(window=10))
    message = _first_batch(dm)
    assert "commonest reason: too_short" in message and "has 8 frames, fewer than the 64 needed" in message


def test_truncated_tars_are_counted_and_only_truncated_tars_stop(shards):
    dm = VideoDataModule([str(shards / "good-000000.tar")] * 3 + [str(shards / "truncated-000000.tar")], batch_size=2,
                         samples_per_epoch=40, data_guard=DataGuard(window=10))
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 20
    assert dm.skip_reasons["unreadable_shard"] >= 1
    dm = VideoDataModule(str(shards / "broken-*.tar"), batch_size=8, shuffle_buffer=0,
                         data_guard=DataGuard(window=10, max_skip_fraction=0.9))
    message = _first_batch(dm)
    assert "of the last 10 shards opened could not be read" in message and "broken-000000.tar" in message


def test_empty_shards_stop_naming_them(shards):
    """All shards empty: the default guard stops once the last 200 shards opened held no sample
    (it used to spin until the 600 s clock ran out)."""
    dm = VideoDataModule(str(shards / "empty-*.tar"), batch_size=2)
    message = _first_batch(dm, timeout=30)
    assert "200 of the last 200 shards opened could not be read or held no sample (0 unreadable, 200 empty: none held a sample)" in message
    assert "empty-000000.tar (empty, 200x)" in message
    assert dm.skip_reasons["empty_shard"] >= 200


def test_empty_shards_stop_after_the_time_limit(shards):
    """With the skip limits off (max_skip_fraction=1), the clock stops it, naming the empty shards."""
    dm = VideoDataModule(str(shards / "empty-*.tar"), batch_size=2,
                         data_guard=DataGuard(max_skip_fraction=1.0, max_seconds_without_sample=1))
    message = _first_batch(dm, timeout=30)
    assert "no sample could be read for" in message and "held no sample: " in message
    assert "empty-000000.tar (empty," in message
    assert DataGuard().max_seconds_without_sample <= 120


def test_an_empty_shard_among_good_ones_is_counted_not_fatal(shards):
    dm = VideoDataModule([str(shards / "good-000000.tar"), str(shards / "empty-000000.tar")], batch_size=2,
                         samples_per_epoch=16, data_guard=DataGuard(window=10))
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 8
    assert dm.skip_reasons["empty_shard"] >= 1 and dm.skipped == 0


def test_a_good_stream_with_some_bad_samples_passes(shards, caplog):
    dm = VideoDataModule([str(shards / "good-000000.tar"), str(shards / "bad-000000.tar")], batch_size=2,
                         samples_per_epoch=16, data_guard=DataGuard(window=10, max_skip_fraction=0.8))
    dm.setup("fit")
    with caplog.at_level("DEBUG", logger="lvdm.data"):
        assert len(list(dm.train_dataloader())) == 8
    assert dm.skip_reasons["corrupt_video"] == dm.skipped > 1
    # every skip is logged, repeats of the same sample included, but only the first as a warning
    skips = [r for r in caplog.records if "skipping sample" in r.getMessage()]
    assert len(skips) == dm.skipped and len({r.getMessage() for r in skips}) < len(skips)
    assert [r.levelname for r in skips].count("WARNING") == 1 and skips[0].levelname == "WARNING"
    assert "further skips for this reason are counted" in skips[0].getMessage()


def test_repeated_skips_warn_once_per_reason(caplog):
    """An image drawn again and again by a video recipe (too_short) warns once, not once per
    draw; another reason still gets its own warning; the counts stay complete."""
    from lvdm.data.video import VideoTooShortError

    watch = DataGuard(max_skip_fraction=1.0).attach().watch()
    with caplog.at_level("WARNING", logger="lvdm.data"):
        for _ in range(26):
            watch.skipped(VideoTooShortError("video 'img' has 1 frames, fewer than the 8 needed"), "img", "a.tar")
        watch.skipped(VideoTooLargeError("too big"), "huge", "a.tar")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "'img'" in warnings[0] and "reason: too_short" in warnings[0] and "reason: too_large" in warnings[1]
    assert watch.guard.counts()["too_short"] == 26 and watch.guard.counts()["too_large"] == 1


STUCK = textwrap.dedent('''
    import sys, lightning as L, torch
    from lvdm.data.datamodule import VideoDataModule
    from lvdm.data.stream_guard import DataGuard

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
        def training_step(self, batch, i):
            return self.w.sum()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    # no limits: without a signal this would spin forever
    dm = VideoDataModule(sys.argv[1], batch_size=2, data_guard=DataGuard(max_skip_fraction=1.0, max_seconds_without_sample=0))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    print("fitting", flush=True)
    trainer.fit(M(), dm)
''')


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_stuck_loader(shards, tmp_path, signum):
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    proc = subprocess.Popen([sys.executable, str(script), str(shards / "bad-*.tar")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.readline().strip() == "fitting"
    time.sleep(3)  # spinning over corrupt samples by now
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"signal {signum!r} did not stop the stuck loader")
    assert proc.returncode != 0
    if signum == signal.SIGTERM:
        assert "DataLoaderStopped" in err or "SIGTERM" in err, err[-2000:]


def _hidden_length_video(frames=300, size=16):
    """A matroska file (no frame count in its header) of ``frames`` frames numbered by brightness."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=8)
        s.width = s.height = size
        s.pix_fmt = "yuv444p"
        s.options = {"crf": "0"}
        for i in range(frames):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((size, size, 3), 2 * (i % 125), np.uint8), format="rgb24")))
        c.mux(s.encode())
    return buf.getvalue()


def test_hidden_frame_count_decodes_only_up_to_the_window(monkeypatch):
    """A container without a frame count (the 52 KB file that decoded to 1.3 GB): the start is
    drawn from a demuxed packet count capped at MAX_SCANNED_FRAMES, and decoding stops at the
    window's last frame."""
    data = _hidden_length_video(300)
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].frames == 0  # the container hides the length
    pulled = []
    real = video_mod._iter_rgb

    def counting(container, label, skip=0, **kwargs):
        for frame in real(container, label, skip, **kwargs):
            pulled.append(1)
            yield frame

    monkeypatch.setattr(video_mod, "_iter_rgb", counting)
    monkeypatch.setattr(video_mod, "MAX_SCANNED_FRAMES", 100)
    for seed in range(5):  # uncapped, a start in [0, 296] would pass frame 100 with probability 2/3 each
        pulled.clear()
        clip = decode_clip(data, 4, random_start=True, rng=np.random.default_rng(seed))
        # frame i has brightness 2i: the window starts within the 100 scanned frames, frames consecutive
        index = [(clip[0, t, 0, 0].item() + 1) * 127.5 / 2 for t in range(4)]
        assert clip.shape == (3, 4, 16, 16) and -0.5 <= index[0] <= 96.5
        assert np.allclose(np.diff(index), 1, atol=0.5)
        assert len(pulled) <= round(index[0]) + 4  # nothing decoded past the window


def test_frames_above_the_pixel_limit_are_refused(monkeypatch):
    monkeypatch.setattr(video_mod, "MAX_PIXELS", 15 * 15)
    with pytest.raises(VideoTooLargeError, match="16x16"):
        decode_clip(_hidden_length_video(8), 4)


def test_skip_counts_are_logged_and_printed_at_the_end_of_fit(shards, caplog):
    import lightning as L

    from lvdm.training.callbacks.data_health import DataHealth

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            return self.w.sum() + batch["video"].mean() * 0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = VideoDataModule([str(shards / "good-000000.tar"), str(shards / "bad-000000.tar")], batch_size=2,
                         samples_per_epoch=8, data_guard=DataGuard(window=10, max_skip_fraction=0.9))
    metrics = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            metrics.append(dict(trainer.callback_metrics))

    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        log_every_n_steps=1, callbacks=[DataHealth(), Record()], enable_model_summary=False)
    with caplog.at_level("INFO"):
        trainer.fit(M(), dm)
    assert metrics[-1]["data/skipped/corrupt_video"] == dm.skip_reasons["corrupt_video"] > 0
    assert f"data: {dm.skipped} sample(s) skipped (corrupt_video: {dm.skipped})" in caplog.text
