from types import SimpleNamespace

import numpy as np
import pytest

from lvdm.data.datamodule import VideoDataModule
from lvdm.data.shards import write_shards
from lvdm.shapes.synthetic import caption, render_clip
from lvdm.data.video import encode_mp4

COMBOS = [("red", "square", "left"), ("green", "circle", "up"), ("blue", "triangle", "down")]


def _samples(prefix, n, rng, bad=()):
    for i in range(n):
        combo = COMBOS[i % 3]
        mp4 = encode_mp4(render_clip(*combo, rng))
        if i in bad:
            # truncated, or junk behind an mp4 signature (write_shards refuses bytes that are not media)
            mp4 = mp4[: len(mp4) // 2] if i % 2 else b"\x00\x00\x00\x18ftypisom" + b"\x00garbage" * 50
        yield {"key": f"{prefix}{i:03d}", "mp4": mp4, "txt": caption(*combo),
               "json": {"fps": 8, "frames": 8, "height": 32, "width": 32}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    write_shards(_samples("t", 24, rng), str(root / "train-%06d.tar"), max_count=6)
    write_shards(_samples("v", 16, rng), str(root / "val-%06d.tar"), max_count=4)
    write_shards(_samples("c", 8, rng, bad=(2, 5)), str(root / "corrupt-%06d.tar"), max_count=8)
    return root


def _keys(loader):
    return [key for batch in loader for key in batch["key"]]


def test_batches_shapes_ranges_captions(shards):
    dm = VideoDataModule(str(shards / "train-*.tar"), str(shards / "val-{000000..000003}.tar"),
                         batch_size=4, samples_per_epoch=20, resolution=(16, 24), shuffle_buffer=8)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    for batch in batches:
        assert batch["video"].shape == (4, 3, 8, 16, 24)
        assert batch["video"].min() >= -1 and batch["video"].max() <= 1 and batch["video"].max() > 0.5
        assert all(c in [caption(*x) for x in COMBOS] for c in batch["caption"])
        assert all(k.startswith("t") for k in batch["key"])
    assert sorted(_keys(dm.val_dataloader())) == [f"v{i:03d}" for i in range(16)]
    assert dm.skipped == 0


def test_corrupt_samples_skipped_warned_counted(shards, caplog):
    dm = VideoDataModule(str(shards / "train-000000.tar"), str(shards / "corrupt-000000.tar"), batch_size=3)
    dm.setup("fit")
    with caplog.at_level("DEBUG", logger="lvdm.data"):  # skips after the first of a reason log at DEBUG
        keys = _keys(dm.val_dataloader())
    messages = [r.getMessage() for r in caplog.records]
    for key in ("c002", "c005"):
        assert any(f"'{key}' in shard" in m and "corrupt-000000.tar" in m for m in messages), messages
    assert keys == [f"c{i:03d}" for i in range(8) if i not in (2, 5)]
    assert dm.skipped == 2
    # training on a corrupt shard still delivers full batches
    dm = VideoDataModule(str(shards / "corrupt-000000.tar"), batch_size=4, samples_per_epoch=12, shuffle_buffer=0)
    dm.setup("fit")
    caplog.clear()
    with caplog.at_level("WARNING", logger="lvdm.data"):
        batches = list(dm.train_dataloader())
    assert any("skipping sample" in r.getMessage() for r in caplog.records)
    assert len(batches) == 3 and all(len(b["key"]) == 4 for b in batches)
    assert dm.skipped >= 2 and dm.skip_reasons["corrupt_video"] == dm.skipped


def test_two_ranks_equal_train_batches_disjoint_val(shards):
    dm = VideoDataModule(str(shards / "train-*.tar"), str(shards / "val-*.tar"), batch_size=2, samples_per_epoch=20)
    dm.setup("fit")
    train, val = [], []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        train.append(len(list(dm.train_dataloader())))
        val.append(set(_keys(dm.val_dataloader())))
    assert train == [5, 5]
    assert not val[0] & val[1] and val[0] | val[1] == {f"v{i:03d}" for i in range(16)}
    # fewer val shards than ranks: every rank reads all of them instead of none
    dm = VideoDataModule(str(shards / "train-*.tar"), str(shards / "val-000000.tar"), batch_size=2)
    dm.setup("fit")
    for rank in range(3):
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        assert _keys(dm.val_dataloader()) == ["v000", "v001", "v002", "v003"]


def test_sequence_parallel_ranks_read_the_same_batches(shards):
    """Under SequenceParallel(size=2) the data split is by data-parallel rank: global ranks
    0 and 1 form one group and read identical batches, ranks 2 and 3 the next replica's."""
    from lvdm.training.callbacks.parallel import SequenceParallel

    dm = VideoDataModule(str(shards / "train-*.tar"), str(shards / "val-*.tar"), batch_size=2,
                         samples_per_epoch=20, shuffle_buffer=4)
    dm.setup("fit")
    train, val = [], []
    for rank in range(4):
        dm.trainer = SimpleNamespace(world_size=4, global_rank=rank, callbacks=[SequenceParallel(size=2)])
        train.append([batch["key"] for batch in dm.train_dataloader()])
        val.append(_keys(dm.val_dataloader()))
    assert len(train[0]) == 5  # 20 samples over 2 data-parallel replicas of batch 2
    assert train[0] == train[1] and train[2] == train[3] and train[0] != train[2]
    assert val[0] == val[1] and val[2] == val[3] and not set(val[0]) & set(val[2])


def test_workers_share_the_epoch(shards):
    dm = VideoDataModule(str(shards), batch_size=2, samples_per_epoch=10, num_workers=2, shuffle_buffer=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert [len(list(loader)) for _ in range(2)] == [5, 5]


def test_missing_shard_path_named(shards):
    with pytest.raises(FileNotFoundError, match="train-000004.tar"):
        VideoDataModule(str(shards / "train-{000000..000009}.tar")).setup("fit")
    with pytest.raises(FileNotFoundError, match="no_val.tar"):
        VideoDataModule(str(shards), str(shards / "no_val.tar")).setup("fit")
