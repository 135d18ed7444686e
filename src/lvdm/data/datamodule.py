"""``VideoDataModule``: streams captioned mp4 clips from WebDataset shards.

Nothing is loaded up front: shards are read as tar streams, samples are shuffled as raw bytes
in a bounded buffer, and clips are decoded on the fly by :func:`lvdm.data.video.decode_clip`.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import warnings

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from lvdm.data.shards import resolve_shards
from lvdm.data.video import decode_clip

__all__ = ["VideoDataModule", "SkipCounter"]


class SkipCounter:
    """Number of samples skipped as unreadable, shared between a process and its DataLoader
    workers (a ``multiprocessing.Value``), so counts made in workers are visible to the trainer.
    """

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def add(self, count: int = 1) -> None:
        with self._value.get_lock():
            self._value.value += count

    @property
    def value(self) -> int:
        return int(self._value.value)


class _SplitByRank:
    """Explicit node splitter: rank ``r`` of ``n`` takes items ``r, r + n, ...``.

    webdataset's own ``split_by_node`` asks ``torch.distributed``; this takes rank and world
    size from the Lightning trainer, so it is right before the process group exists and is
    testable without one.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __call__(self, src):
        return itertools.islice(src, self.rank, None, self.world_size)


def _stream_seed(seed: int, rank: int, epoch: int) -> list[int]:
    """Seed for one pass of one pipeline stage, distinct per rank, DataLoader worker and epoch."""
    worker = get_worker_info()
    return [seed, rank, worker.id if worker else 0, epoch]


class _Shuffle:
    """Pipeline stage: ``webdataset.shuffle`` with a buffer of ``bufsize`` raw samples, seeded
    per rank, worker and epoch (ranks may draw the same shard, and must not then yield the
    same sample order)."""

    def __init__(self, bufsize: int, seed: int, rank: int) -> None:
        self.bufsize, self.seed, self.rank = bufsize, seed, rank
        self.epoch = 0

    def __call__(self, samples):
        rng = random.Random(str(_stream_seed(self.seed, self.rank, self.epoch)))
        self.epoch += 1
        return wds.shuffle(self.bufsize, rng=rng)(samples)


class _DecodeClips:
    """Pipeline stage: raw samples -> ``{"video", "caption", "key"}``, skipping bad samples."""

    def __init__(self, num_frames: int, frame_interval: int, resolution: int | tuple[int, int],
                 random_start: bool, seed: int, rank: int, skipped: SkipCounter) -> None:
        self.num_frames, self.frame_interval, self.resolution = num_frames, frame_interval, resolution
        self.random_start, self.seed, self.rank, self.skipped = random_start, seed, rank, skipped
        self.epoch = 0

    def __call__(self, samples):
        rng = np.random.default_rng(_stream_seed(self.seed, self.rank, self.epoch))
        self.epoch += 1
        for sample in samples:
            key, shard = sample.get("__key__"), sample.get("__url__")
            try:
                video = decode_clip(sample["mp4"], self.num_frames, self.frame_interval, self.resolution,
                                    random_start=self.random_start, rng=rng, name=repr(key))
                caption = sample["txt"].decode("utf-8")
            except (ValueError, KeyError) as exc:  # corrupt/short video, bad text, missing entry
                self.skipped.add()
                warnings.warn(f"skipping sample {key!r} in shard {shard}: {type(exc).__name__}: {exc}")
                continue
            yield {"video": video, "caption": caption, "key": key}


class _WorkerShare:
    """Pipeline stage: this DataLoader worker's share of ``total`` batches, so that all workers
    of a rank together yield exactly ``total`` (``with_epoch`` would give each worker the same
    count and the rank ``num_workers`` times too many)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, batches):
        worker = get_worker_info()
        index, count = (worker.id, worker.num_workers) if worker else (0, 1)
        return itertools.islice(batches, self.total // count + int(index < self.total % count))


class _EpochPipeline(wds.DataPipeline):
    """A pipeline with a known number of batches per epoch, so Lightning can size its loops."""

    def __init__(self, *stages, length: int) -> None:
        super().__init__(*stages)
        self.length = length

    def __len__(self) -> int:
        return self.length


def _collate(samples: list[dict]) -> dict:
    return {"video": torch.stack([s["video"] for s in samples]),
            "caption": [s["caption"] for s in samples], "key": [s["key"] for s in samples]}


def _same_stream() -> int:
    """Worker seed for ``ResampledShards``: every rank and worker draws the same shard sequence,
    and the rank and worker splitters then deal it out, so no two of them read the same draw."""
    return 0


class VideoDataModule(L.LightningDataModule):
    """Captioned video clips from WebDataset shards (``key.mp4`` + ``key.txt`` [+ ``key.json``]).

    Batches are ``{"video": float [B, 3, T, H, W] in [-1, 1], "caption": list[str], "key":
    list[str]}``.

    Training samples shards with replacement (``webdataset.ResampledShards``, seeded by
    ``seed`` and the epoch), deals the draws out across ranks and DataLoader workers, shuffles
    samples in a buffer, decodes a random valid window of each clip, and stops after exactly
    ``samples_per_epoch // (batch_size * world_size)`` full batches on every rank, so uneven
    shards can never leave one rank waiting in a collective.

    Validation reads every val shard once, in order, without shuffling, from the first frame:
    rank ``r`` of ``n`` reads shards ``r, r + n, ...`` (so ranks may get different batch
    counts; keep the number of val shards a multiple of the world size for equal counts), and
    if there are fewer val shards than ranks every rank reads all of them, rather than some
    ranks having none. The last batch may be smaller than ``batch_size``.

    Unreadable samples (corrupt or truncated mp4, too few frames, missing entries) are skipped
    with a warning naming the key and shard, and counted: read ``datamodule.skipped`` (this
    rank's total since ``setup``, including counts made in DataLoader workers).

    Args:
        train_shards: Train shards: a directory, glob, brace pattern, file, or a list of these.
        val_shards: Validation shards, same forms; ``None`` for no validation.
        batch_size: Clips per batch on each rank.
        num_frames: Frames per clip.
        frame_interval: Step between taken frames (1 = consecutive frames).
        resolution: Clip ``(height, width)``, or one int for a square; videos are resized to
            cover it and centre-cropped.
        num_workers: DataLoader worker processes per rank (0 decodes in the main process).
        samples_per_epoch: Train clips per epoch over all ranks (rounded down to whole batches).
        shuffle_buffer: Samples held in the train shuffle buffer (0 or 1 disables shuffling).
        seed: Seed for shard sampling, shuffling and clip start positions.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        batch_size: int = 16,
        num_frames: int = 8,
        frame_interval: int = 1,
        resolution: int | tuple[int, int] = 32,
        num_workers: int = 0,
        samples_per_epoch: int = 4096,
        shuffle_buffer: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_frames < 1 or frame_interval < 1 or num_workers < 0:
            raise ValueError("batch_size, num_frames and frame_interval must be >= 1 and num_workers >= 0")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size, self.num_frames, self.frame_interval = batch_size, num_frames, frame_interval
        self.resolution, self.num_workers = resolution, num_workers
        self.samples_per_epoch, self.shuffle_buffer, self.seed = samples_per_epoch, shuffle_buffer, seed
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] | None = None
        self._skipped: SkipCounter | None = None

    @property
    def skipped(self) -> int:
        """Samples skipped as unreadable on this rank since ``setup`` (0 before it)."""
        return self._skipped.value if self._skipped is not None else 0

    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` from the attached trainer, else ``(1, 0)``."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard lists; a missing path raises ``FileNotFoundError`` naming it."""
        if stage in (None, "fit"):
            self.train_urls = resolve_shards(self.train_shards)
        if self.val_shards is not None and stage in (None, "fit", "validate"):
            self.val_urls = resolve_shards(self.val_shards)
        if self._skipped is None:
            self._skipped = SkipCounter()  # made here, not in __init__, so the module stays picklable

    def _decoder(self, random_start: bool, rank: int) -> _DecodeClips:
        if self._skipped is None:
            raise RuntimeError("call VideoDataModule.setup() before asking for a dataloader")
        return _DecodeClips(self.num_frames, self.frame_interval, self.resolution, random_start,
                            self.seed, rank, self._skipped)

    def _loader(self, dataset) -> DataLoader:
        # Persistent workers keep the pipeline's epoch counters, so each epoch draws new shards.
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Endless resampled stream cut to the same number of full batches on every rank."""
        if self.train_urls is None:
            raise RuntimeError("call VideoDataModule.setup('fit') before asking for train_dataloader")
        world_size, rank = self._world()
        batches = self.samples_per_epoch // (self.batch_size * world_size)
        if batches == 0:
            raise ValueError(f"samples_per_epoch={self.samples_per_epoch} gives no full batch of "
                             f"{self.batch_size} on each of {world_size} ranks")
        stages = [
            wds.ResampledShards(self.train_urls, seed=self.seed, deterministic=True, worker_seed=_same_stream),
            _SplitByRank(rank, world_size),
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
        ]
        if self.shuffle_buffer > 1:
            stages.append(_Shuffle(self.shuffle_buffer, self.seed, rank))
        stages += [self._decoder(True, rank), wds.batched(self.batch_size, collation_fn=_collate, partial=False),
                   _WorkerShare(batches)]
        return self._loader(_EpochPipeline(*stages, length=batches))

    def val_dataloader(self) -> DataLoader | list:
        """Each val shard once, in order, split across ranks (see the class docstring).

        Returns an empty list (no validation) when ``val_shards`` is ``None``.
        """
        if self.val_shards is None:
            return []
        if self.val_urls is None:
            raise RuntimeError("call VideoDataModule.setup('fit' or 'validate') before asking for val_dataloader")
        world_size, rank = self._world()
        stages = [wds.SimpleShardList(self.val_urls)]
        if len(self.val_urls) >= world_size:
            stages.append(_SplitByRank(rank, world_size))
        stages += [wds.split_by_worker, wds.tarfile_to_samples(handler=wds.warn_and_continue),
                   self._decoder(False, rank), wds.batched(self.batch_size, collation_fn=_collate, partial=True)]
        return self._loader(wds.DataPipeline(*stages))
