"""The training stream of the shard data modules: resampled shards → shuffled samples →
planned samples → batches of one shape → decoded batches, resumable at any batch.

Everything random in it is a function of ``(seed, data-parallel rank, worker role, epoch)``,
and decoding comes last: a sample is first *planned* — its bucket chosen from its header or
metadata and a seed drawn for its own random choices (clip start) — then grouped with others
of its bucket, and only the batches a worker actually delivers are decoded. So the stream
can be replayed to any batch at the cost of reading tar headers (no video decoding), which is
how a run resumed at batch ``k`` of an epoch continues with batch ``k + 1`` of the
uninterrupted run (:class:`TrainStream`'s ``skip``).

The per-rank batch count is fixed in advance (``batches``), identical on every rank, so no
rank can wait alone in a collective at the end of an epoch, whatever the buckets.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["Counters", "Planned", "TrainStream", "plan_and_group", "decode_group", "worker_share"]


class Counters:
    """Named counts shared between a process and its DataLoader workers (``multiprocessing``
    values), so counts made in workers are visible to the trainer."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._values = {name: multiprocessing.Value("q", 0) for name in names}

    def add(self, name: str, count: int = 1) -> None:
        value = self._values[name]
        with value.get_lock():
            value.value += count

    def as_dict(self) -> dict[str, int]:
        return {name: int(value.value) for name, value in self._values.items()}


@dataclass
class Planned:
    """One raw sample with the choices made for it before decoding."""

    sample: dict
    group: Hashable  # samples of one group share a batch shape (a bucket name; None without buckets)
    batch_size: int
    bucket: object  # the lvdm.data.buckets.Bucket, or None
    seed: int  # seeds the sample's own random choices at decode time


# assign(sample, rng) -> (group, batch_size, bucket), or a reason string when the sample fits no bucket
Assign = Callable[[dict, np.random.Generator], "tuple[Hashable, int, object] | str"]
# decode(sample, rng, random_start, bucket) -> dict of tensors and strings
Decode = Callable[[dict, np.random.Generator, bool, object], dict]


def _skip(sample: dict, exc: Exception, counters: Counters, watch) -> None:
    counters.add("skipped")
    watch.skipped(exc, sample.get("__key__"), sample.get("__url__"))  # logged, by reason, guard-checked


def plan_and_group(samples, assign: Assign, rng: np.random.Generator, counters: Counters, watch,
                   flush: bool = False) -> Iterator[list[Planned]]:
    """Plan each sample (:data:`Assign`) and yield a group as soon as it holds its bucket's
    batch size; with ``flush``, the partial groups left at the end too (evaluation).

    Samples whose header cannot be read are skipped and counted (``skipped``, and by reason in
    the :class:`~lvdm.data.stream_guard.StreamWatch` ``watch``, which stops a stream that skips too
    much); samples that fit no bucket are counted under their reason."""
    pending: dict = defaultdict(list)
    for sample in samples:
        seed = int(rng.integers(2**63))  # drawn for every sample, so a skip shifts nothing else
        try:
            planned = assign(sample, rng)
        except (ValueError, KeyError) as exc:
            _skip(sample, exc, counters, watch)
            continue
        if isinstance(planned, str):
            counters.add(planned)
            continue
        group, batch_size, bucket = planned
        pending[group].append(Planned(sample, group, batch_size, bucket, seed))
        if len(pending[group]) >= batch_size:
            yield pending.pop(group)
    if flush:
        yield from (group for group in pending.values() if group)


def decode_group(group: list[Planned], decode: Decode, random_start: bool, counters: Counters, watch) -> list[dict]:
    """Decode the samples of one group, each with the generator of its own seed.

    A sample that fails here (its header read, its body did not) is skipped and counted, and
    its place taken by another sample of the group, so the batch keeps its size and the stream
    its length (replacing it with a later sample would make the stream depend on what was
    decoded, and resuming it inexact). Returns ``[]`` when none decodes; the stream then takes
    the next group instead (the one case where a resumed stream can differ: when every sample
    of a batch in the replayed part failed)."""
    decoded = []
    for item in group:
        try:
            out = decode(item.sample, np.random.default_rng(item.seed), random_start, item.bucket)
        except (ValueError, KeyError) as exc:  # corrupt/short data, bad text, missing entry
            _skip(item.sample, exc, counters, watch)
            continue
        watch.delivered(item.sample.get("__url__"))
        decoded.append({**out, "key": item.sample.get("__key__")})
    if decoded and len(decoded) < len(group):
        decoded = list(itertools.islice(itertools.cycle(decoded), len(group)))
    return decoded


def worker_share(total: int, skip: int, workers: int, role: int) -> tuple[int, int]:
    """``(batches to skip, batches to deliver)`` of the worker in ``role`` when a rank delivers
    batches ``skip .. total - 1`` and batch ``j`` is made by role ``j % workers``."""
    def count(n: int) -> int:  # batches j < n with j % workers == role
        return n // workers + int(role < n % workers)

    skip = min(skip, total)
    return count(skip), count(total) - count(skip)


class TrainStream(IterableDataset):
    """An endless resampled shard stream cut to exactly ``batches`` batches per epoch.

    Shards are drawn with replacement from ``urls`` by one generator per epoch (the same draw
    sequence on every rank and worker) and dealt out: draw ``i`` goes to rank ``i % world``
    and, within it, to worker role ``(i // world) % workers``. Each worker shuffles its samples
    in a buffer, plans and groups them (:func:`plan_and_group`), keeps the groups of its role
    (batch ``j`` of the rank is made by role ``j % workers``, which is the order in which a
    DataLoader collects from its workers) and decodes only those.

    Resuming: ``skip`` batches of epoch ``skip_epoch`` are passed over without decoding; the
    worker with DataLoader id ``w`` then takes role ``(w + skip) % workers`` for that epoch, so
    that the DataLoader, which always asks worker 0 first, receives batch ``skip`` first.

    Args:
        urls: shard paths or URLs.
        batches: batches per epoch on this rank (the same on every rank).
        rank, world: data-parallel rank and world size.
        seed: base seed.
        shuffle_buffer: samples in the shuffle buffer (<= 1: no shuffling).
        assign, decode: the data module's sample planning and decoding.
        collate: list of decoded samples → batch.
        counters: where skipped and unfit samples are counted.
        watch: the :class:`~lvdm.data.stream_guard.StreamWatch` that sees every shard, skip and
            delivered sample and stops a stream that fails too often.
        start_epoch: epoch number of the first iteration.
        skip_epoch, skip: resume position (``skip`` batches of epoch ``skip_epoch`` are done).
    """

    def __init__(self, urls: list[str], batches: int, rank: int, world: int, seed: int, shuffle_buffer: int,
                 assign: Assign, decode: Decode, collate: Callable[[list[dict]], dict], counters: Counters, watch,
                 start_epoch: int = 0, skip_epoch: int = -1, skip: int = 0) -> None:
        self.urls, self.batches, self.rank, self.world = urls, batches, rank, world
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.assign, self.decode, self.collate, self.counters, self.watch = assign, decode, collate, counters, watch
        self.epoch, self.skip_epoch, self.skip = start_epoch, skip_epoch, skip

    def __len__(self) -> int:
        return self.batches

    def _shards(self, epoch: int, role: int, workers: int) -> Iterator[dict]:
        draws = random.Random(str([self.seed, "shards", epoch]))
        urls = ({"url": draws.choice(self.urls)} for _ in itertools.count())
        return itertools.islice(urls, self.rank + self.world * role, None, self.world * workers)

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        self.epoch += 1  # persistent workers keep their copy: the next iteration is the next epoch
        worker = get_worker_info()
        wid, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        skip = self.skip if epoch == self.skip_epoch else 0
        role = (wid + skip) % workers
        passed, count = worker_share(self.batches, skip, workers, role)
        stream = [self.seed, self.rank, role, epoch]
        self.watch.start()
        shards = self.watch.shards(self._shards(epoch, role, workers))
        samples = self.watch.samples(wds.tarfile_to_samples(handler=self.watch.shard_error)(shards))
        if self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, rng=random.Random(str(stream + ["shuffle"])))(samples)
        groups = plan_and_group(samples, self.assign, np.random.default_rng(stream), self.counters, self.watch)
        if count == 0:
            return
        delivered = 0
        for index, group in enumerate(groups):
            if index < passed:  # replayed up to the resume position: planned, never decoded
                continue
            decoded = decode_group(group, self.decode, True, self.counters, self.watch)
            if not decoded:  # every sample failed (each logged and counted): the next group takes its place
                continue
            yield self.collate(decoded)
            delivered += 1
            if delivered == count:
                return
