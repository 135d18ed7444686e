"""The bucketed training stream: a mixed corpus of landscape, portrait and square videos of
several lengths plus images, batched by bucket."""

import io
import math
from collections import Counter, defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lvdm.data.buckets import BucketConfig
from lvdm.data.datamodule import VideoDataModule
from lvdm.data.shards import write_shards
from lvdm.data.video import encode_mp4

# (kind, height, width, frames, count): sizes small enough to decode fast
CORPUS = [("land", 24, 40, 12, 4), ("port", 40, 24, 10, 4), ("square", 20, 20, 12, 8),
          ("image", 32, 32, 1, 4), ("tiny", 8, 8, 12, 2)]
SIZES = {kind: (h, w, t) for kind, h, w, t, _ in CORPUS}
MAX_UPSCALE = 1.0


def bucket_config() -> BucketConfig:
    # "32" = 1024 px: 24x40 / 32x32 / 40x24 bins; "16" = 256 px: 16x24 / 16x16 / 24x16 bins
    return BucketConfig({"32": {1: (1.0, 4), 8: (1.0, 2)}, "16": {8: (0.5, 4), 4: (1.0, 3)}},
                        aspect_ratios=[9 / 16, 1.0, 16 / 9], multiple_of=8, max_upscale=MAX_UPSCALE)


def _corpus(rng):
    for kind, h, w, t, count in CORPUS:
        for i in range(count):
            frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
            media = {"png": _png(frames[0])} if kind == "image" else {"mp4": encode_mp4(frames)}
            meta = {"height": h, "width": w, "frames": t, "fps": 8} if i % 2 else {}  # else: read the header
            yield {"key": f"{kind}{i}", **media, "txt": f"a {kind} clip", "json": meta}


def _png(frame) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    samples = list(_corpus(np.random.default_rng(0)))
    order = np.random.default_rng(1).permutation(len(samples))
    write_shards([samples[i] for i in order], str(root / "train-%06d.tar"), max_count=8)
    return root


def _module(root, **kwargs):
    args = dict(batch_size=3, samples_per_epoch=150, shuffle_buffer=8, buckets=bucket_config())
    dm = VideoDataModule(str(root / "train-*.tar"), **{**args, **kwargs})
    dm.setup("fit")
    return dm


def test_mixed_corpus_gives_uniform_batches_of_each_bucket(mixed):
    dm = _module(mixed, samples_per_epoch=600)
    cfg = dm.buckets
    batches = list(dm.train_dataloader())
    assert len(batches) == 200
    shapes = Counter()
    per_kind = defaultdict(Counter)
    for batch in batches:
        b, c, t, h, w = batch["video"].shape
        shapes[(t, h, w)] += 1
        # one bucket per batch, with that bucket's batch size
        (name,) = {n for n, _ in cfg.resolutions.items() if (t in cfg.resolutions[n] and
                   (h, w) in {cfg.bin_size(n, r) for r in cfg.aspect_ratios[n]})}
        assert b == cfg.resolutions[name][t][1], (name, t, b)
        for key in batch["key"]:
            kind = key.rstrip("0123456789")
            sh, sw, st = SIZES[kind]
            assert max(h / sh, w / sw) <= MAX_UPSCALE + 1e-9, (key, (h, w))  # never upscaled
            assert t <= st
            per_kind[kind][(t, h, w)] += 1
    assert len(shapes) >= 3, shapes
    assert set(per_kind["land"]) == {(8, 24, 40)} and set(per_kind["port"]) == {(8, 40, 24)}
    assert set(per_kind["image"]) == {(1, 32, 32)} and "tiny" not in per_kind
    # square 20x20 clips: too small for "32" (1.6x upscale); "16"'s 8-frame bucket keeps half
    square = per_kind["square"]
    assert set(square) == {(8, 16, 16), (4, 16, 16)}
    n = sum(square.values())
    seen = square[(8, 16, 16)] / n
    assert abs(seen - 0.5) < 4 * math.sqrt(0.25 / n) + 4 / n, (seen, n)  # (+ one partly held batch each)
    assert dm.unfit["too_small"] > 0 and dm.skipped == 0


def test_workers_and_ranks_get_equal_counts_and_sequence_parallel_twins_match(mixed):
    dm = _module(mixed, num_workers=2)
    counts, keys = [], []
    for trainer in (SimpleNamespace(world_size=2, global_rank=0), SimpleNamespace(world_size=2, global_rank=1)):
        dm.trainer = trainer
        batches = list(dm.train_dataloader())
        counts.append(len(batches))
        keys.append([b["key"] for b in batches])
    assert counts == [25, 25] and keys[0] != keys[1]
    # one sequence-parallel group of 2 ranks = one data-parallel rank: identical batches
    from lvdm.training.callbacks.parallel import SequenceParallel

    twins = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, callbacks=[SequenceParallel(size=2)])
        twins.append([(b["key"], b["video"].sum().item()) for b in dm.train_dataloader()])
    assert twins[0] == twins[1] and len(twins[0]) == 50


def test_stream_is_reproducible_and_resumes_at_any_batch(mixed):
    # 30 samples = 10 batches: more than the 20 usable clips, so the stream wraps around its shards
    for workers in (0, 2):
        full = [b["key"] for b in _module(mixed, num_workers=workers, samples_per_epoch=30).train_dataloader()]
        assert len(full) == 10
        assert full == [b["key"] for b in _module(mixed, num_workers=workers, samples_per_epoch=30).train_dataloader()]
        for done in (1, 7):
            dm = _module(mixed, num_workers=workers, samples_per_epoch=30)
            dm.load_state_dict({"stream": {"epoch": 0, "batches": done, **dm._layout()}})
            assert [b["key"] for b in dm.train_dataloader()] == full[done:], (workers, done)


def test_eval_with_buckets_reads_everything_once(mixed):
    dm = VideoDataModule(str(mixed / "train-*.tar"), str(mixed / "train-*.tar"), buckets=bucket_config())
    dm.setup("fit")
    keys = [k for batch in dm.val_dataloader() for k in batch["key"]]
    total = sum(count for kind, *_, count in CORPUS if kind != "tiny")
    assert len(keys) == len(set(keys)) == total


def test_changed_layout_resumes_by_global_sample_count(mixed):
    dm = _module(mixed)  # 150 samples / 3 = 50 batches an epoch on one rank
    state = {"stream": {**dm._layout(), "epoch": 2, "batches": 3, "world_size": 4, "batch_size": 2}}
    dm.load_state_dict(state)
    with pytest.warns(UserWarning, match="carried over by sample count"):
        # 3 batches x 2 samples x 4 ranks = 24 samples = 8 batches of 3 on 1 rank
        assert dm._resume_position(50) == (2, 8)
    dm.load_state_dict({"stream": {**dm._layout(), "epoch": 2, "batches": 50}})
    assert dm._resume_position(50) == (3, 0)  # a finished epoch resumes at the next one
    assert dm.state_dict() == {}  # outside of fitting there is no position to save
