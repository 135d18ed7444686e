"""Data modules that stream samples from WebDataset shards.

:class:`ShardDataModule` holds everything that is not about the sample format: shard lists,
resampling, the split across ranks and DataLoader workers, shuffling, batching, exact per-rank
batch counts, and skipping (and counting) unreadable samples. Its subclasses only say how one
raw sample becomes tensors: :class:`VideoDataModule` decodes video and image clips on the fly,
:class:`LatentDataModule` reads precomputed raw latents (``key.latent.npy``, written by
:func:`lvdm.curation.encode.encode_shards`).

Nothing is loaded up front: shards are read as tar streams and samples are shuffled as raw
bytes in a bounded buffer before they are decoded.
"""

from __future__ import annotations

import io
import itertools
import logging
import warnings
from abc import ABC, abstractmethod
from typing import Optional

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from lvdm.data.buckets import UNFIT_REASONS, Bucket, BucketConfig, sample_size
from lvdm.data.stream_guard import DataGuard, StreamWatch
from lvdm.data.schema import media_entry, media_kind, sample_json
from lvdm.data.shards import resolve_shards
from lvdm.data.stream import Counters, TrainStream, decode_group, plan_and_group
from lvdm.distributed.ranks import data_parallel_rank_world
from lvdm.data.video import MAX_DECODED_BYTES, decode_clip
from lvdm.models.contract import IMAGE_FPS

__all__ = ["ShardDataModule", "VideoDataModule", "LatentDataModule"]

# what the data modules count: unreadable samples, and samples that fit no bucket (by reason)
_COUNTS = ("skipped", *UNFIT_REASONS, "not_in_config")


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


class _DecodeSamples:
    """Pipeline stage: raw samples -> dicts by ``decode(sample, rng, random_start)`` plus
    ``"key"``, skipping (logged, counted by reason, checked against the :class:`DataGuard`
    limits by ``watch``) samples it rejects with ``ValueError`` or ``KeyError``."""

    def __init__(self, decode, random_start: bool, seed: int, rank: int, skipped: Counters, watch: StreamWatch) -> None:
        self.decode, self.random_start = decode, random_start
        self.seed, self.rank, self.skipped, self.watch = seed, rank, skipped, watch
        self.epoch = 0

    def __call__(self, samples):
        rng = np.random.default_rng(_stream_seed(self.seed, self.rank, self.epoch))
        self.epoch += 1
        self.watch.start()
        for sample in samples:
            key, shard = sample.get("__key__"), sample.get("__url__")
            try:
                decoded = self.decode(sample, rng, self.random_start)
            except (ValueError, KeyError) as exc:  # corrupt/short data, bad text, missing entry
                self.skipped.add("skipped")
                self.watch.skipped(exc, key, shard)
                continue
            self.watch.delivered(shard)
            yield {**decoded, "key": key}


#: fields a sample may lack (a latent whose json records no size): a batch has them when all its samples do
_OPTIONAL = ("height", "width", "fps")


def _collate(samples: list[dict]) -> dict:
    """Stack tensor fields (which must agree in shape) and list the others."""
    batch = {}
    for name, first in samples[0].items():
        if name in _OPTIONAL and not all(name in sample for sample in samples):
            continue  # the model then derives the condition
        values = [sample[name] for sample in samples]
        if isinstance(first, torch.Tensor):
            shapes = [tuple(v.shape) for v in values]
            if len(set(shapes)) > 1:
                found = ", ".join(f"{s['key']!r}: {list(shape)}" for s, shape in zip(samples, shapes))
                raise ValueError(f"cannot batch {name!r} tensors of different shapes ({found}); "
                                 f"were these shards written with different settings?")
            values = torch.stack(values)
        batch[name] = values
    return batch


class _TrainLoader(DataLoader):
    """The train stream's DataLoader: knows which stream epoch its current iteration delivers
    (``epoch``), which can differ from Lightning's epoch count (a run stopped by ``max_steps``
    mid-epoch is saved as a finished epoch and resumed as a partial next one).

    ``state_dict`` / ``load_state_dict`` tell Lightning the loader is resumable: the position
    itself travels in the data module's state (:meth:`ShardDataModule.state_dict`), which is
    restored before the loader is built."""

    epoch = -1  # no iteration yet
    next_epoch = 0

    def __iter__(self):
        self.epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return super().__iter__()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


def _set_batches_done(trainer: L.Trainer, done: int) -> None:
    """Make Lightning's count of the batches done in the resumed epoch the stream's: after a
    layout change Lightning keeps the old layout's count (its bar showed ``51/9``, and the epoch
    then ends only when the stream does). Only ``current`` is set (Lightning reads its restart
    stage from ``total``); its reset adds 1 to ``completed`` when the checkpoint was written at
    a batch end, so the gap between ``processed`` and ``completed`` is kept."""
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    gap = current.processed - current.completed
    current.ready = current.started = current.processed = done
    current.completed = done - gap


class ShardDataModule(L.LightningDataModule, ABC):
    """Samples from WebDataset shards; subclasses define the sample format in :meth:`decode_sample`.

    Training samples shards with replacement (seeded by ``seed`` and the epoch), deals the
    draws out across ranks and DataLoader workers, shuffles samples in a buffer, decodes them,
    and stops after exactly ``samples_per_epoch // (batch_size * world_size)`` batches on every
    rank, so uneven shards or buckets can never leave one rank waiting in a collective
    (:class:`lvdm.data.stream.TrainStream`). Under sequence parallelism
    (:class:`lvdm.training.callbacks.parallel.SequenceParallel`) ranks and world size here are the
    data-parallel ones: the ranks of one sequence-parallel group read the same batches.

    With ``buckets`` (:class:`lvdm.data.buckets.BucketConfig`) every sample goes to a bucket
    (a resolution, aspect bin and frame count) and each batch holds one bucket's samples, as
    many as that bucket's batch size; ``batch_size`` then only sizes the epoch. Samples that
    fit no bucket are counted by reason: ``datamodule.unfit``.

    Resuming: the data module's ``state_dict`` (which Lightning stores in checkpoints) holds
    the stream position — epoch and batches delivered in it, the same on every rank — and a
    resumed run replays each rank's stream up to it without decoding, then continues with the
    batch the uninterrupted run would have delivered next. This is exact when the world size,
    ``num_workers``, ``batch_size``, ``samples_per_epoch``, ``seed`` and buckets are those of
    the checkpoint. When one of them changed, the position is carried over by global sample
    count (batches done × batch_size × world size, re-divided by the new ones) in the same
    epoch: the count of samples trained on is kept, but the batches that follow are a fresh
    draw for the new layout, not the ones the old run would have seen.

    Validation reads every val shard once, in order, without shuffling: rank ``r`` of ``n``
    reads shards ``r, r + n, ...`` (so ranks may get different batch counts; keep the number of
    val shards a multiple of the world size for equal counts), and if there are fewer val shards
    than ranks every rank reads all of them, rather than some ranks having none. The last batch
    (of each bucket, with buckets) may be smaller than the batch size.

    Unreadable samples are skipped with a warning naming the key and shard, and counted: read
    ``datamodule.skipped`` (this rank's total since ``setup``, including counts made in
    DataLoader workers).

    Args:
        train_shards: Train shards: a directory, glob, brace pattern, file, or a list of these.
        val_shards: Validation shards, same forms; ``None`` for no validation.
        batch_size: Samples per batch on each rank (with ``buckets``: only sizes the epoch).
        num_workers: DataLoader worker processes per rank (0 decodes in the main process).
        samples_per_epoch: Train samples per epoch over all ranks (rounded down to whole batches).
        shuffle_buffer: Samples held in the train shuffle buffer (0 or 1 disables shuffling).
        seed: Seed for shard sampling, shuffling and any random choice made while decoding.
        test_shards: Shards for ``lvdm test``, same forms; ``None`` uses ``val_shards``.
        buckets: Resolution / aspect / duration buckets; ``None`` for one shape.
        data_guard: limits on skipped samples and on time without a sample, past which the
            stream stops with an error saying why (:class:`lvdm.data.stream_guard.DataGuard`;
            ``None``: its defaults).
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        samples_per_epoch: int = 4096,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        test_shards: str | list[str] | None = None,
        buckets: Optional[BucketConfig] = None,
        data_guard: DataGuard | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for key, value, ok, rule in (("batch_size", batch_size, batch_size >= 1, ">= 1"),
                                     ("num_workers", num_workers, num_workers >= 0, ">= 0"),
                                     ("samples_per_epoch", samples_per_epoch, samples_per_epoch >= 1, ">= 1"),
                                     ("shuffle_buffer", shuffle_buffer, shuffle_buffer >= 0, ">= 0 (0 or 1: no shuffling)")):
            if not ok:
                raise ValueError(f"{name}.{key} must be {rule}, got {value}")
        self.train_shards, self.val_shards, self.test_shards = train_shards, val_shards, test_shards
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch, self.shuffle_buffer, self.seed = samples_per_epoch, shuffle_buffer, seed
        self.buckets = buckets
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] | None = None
        self.test_urls: list[str] | None = None
        self._counts: Counters | None = None
        self._resume: dict | None = None
        self._train_loader: _TrainLoader | None = None
        self.data_guard = data_guard or DataGuard()

    @abstractmethod
    def decode_sample(self, sample: dict, rng: np.random.Generator, random_start: bool,
                      bucket: Optional[Bucket] = None) -> dict:
        """One raw WebDataset sample (``{"__key__", "__url__", extension: bytes, ...}``) → a
        dict of tensors and strings (without ``"key"``, which is added).

        ``random_start`` is true for training (take a random window where the format has a
        choice; draw from ``rng``) and false for evaluation. ``bucket`` is the sample's bucket
        (from :meth:`assign_sample`) whose shape the output must have, or ``None``. Raise
        ``ValueError`` or ``KeyError`` for an unreadable sample: it is then skipped and counted.
        """

    def assign_sample(self, sample: dict, rng: np.random.Generator):
        """``(group, batch size, bucket)`` of a raw sample, read from its header or metadata
        only (no decoding), or a reason string when it fits no bucket. Samples of one group
        are batched together. Without buckets: one group of ``batch_size``."""
        return None, self.batch_size, None

    @property
    def skipped(self) -> int:
        """Samples skipped as unreadable on this rank since ``setup`` (0 before it)."""
        return self._counts.as_dict()["skipped"] if self._counts is not None else 0

    @property
    def unfit(self) -> dict[str, int]:
        """Samples that fit no bucket on this rank since ``setup``, by reason (``too_small``,
        ``too_short``, ``dropped``; ``not_in_config`` for latents of a bucket the config lacks)."""
        counts = self._counts.as_dict() if self._counts is not None else dict.fromkeys(_COUNTS, 0)
        return {name: n for name, n in counts.items() if name != "skipped"}

    @property
    def skip_reasons(self) -> dict[str, int]:
        """Samples (and unreadable shards) skipped on this rank since ``setup``, by reason
        (:data:`lvdm.data.stream_guard.REASONS`)."""
        return self.data_guard.counts()

    def _rank_world(self) -> tuple[int, int]:
        """``(rank, world_size)`` of data parallelism from the attached trainer, else ``(0, 1)``.

        Under sequence parallelism the ranks of one group share each batch, so data is split
        by data-parallel rank, not global rank (:func:`lvdm.distributed.ranks.data_parallel_rank_world`).
        """
        return data_parallel_rank_world(self.trainer)

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard lists; a missing path raises ``FileNotFoundError`` naming it."""
        if stage in (None, "fit"):
            self.train_urls = resolve_shards(self.train_shards)
        if self.val_shards is not None and stage in (None, "fit", "validate"):
            self.val_urls = resolve_shards(self.val_shards)
        if stage in (None, "test"):
            test = self.test_shards if self.test_shards is not None else self.val_shards
            if test is None:
                raise ValueError(f"{type(self).__name__} has neither test_shards nor val_shards to test on")
            self.test_urls = resolve_shards(test)
        if self._counts is None:
            self._counts = Counters(_COUNTS)  # made here, not in __init__, so the module stays picklable
            self.data_guard.attach()

    def teardown(self, stage: str | None = None) -> None:
        unfit = {name: n for name, n in self.unfit.items() if n}
        if unfit:
            logging.getLogger(__name__).warning("%d sample(s) fit no bucket and were left out: %s",
                                                sum(unfit.values()), unfit)

    def _decoder(self, random_start: bool, rank: int, watch: StreamWatch) -> _DecodeSamples:
        if self._counts is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() before asking for a dataloader")
        return _DecodeSamples(self.decode_sample, random_start, self.seed, rank, self._counts, watch)

    def _loader(self, dataset, cls: type[DataLoader] = DataLoader) -> DataLoader:
        # Persistent workers keep the pipeline's epoch counters, so each epoch draws new shards.
        # Pinned batches let Lightning's non-blocking copy to the GPU overlap the step.
        return cls(dataset, batch_size=None, num_workers=self.num_workers,
                   persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    # ------------------------------------------------------------------ stream position
    def _layout(self) -> dict:
        _, world_size = self._rank_world()
        return {"world_size": world_size, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "samples_per_epoch": self.samples_per_epoch, "seed": self.seed, "buckets": repr(self.buckets)}

    def state_dict(self) -> dict:
        """The training stream's position: the stream's epoch (its own count, not Lightning's)
        and the batches Lightning took from it on each rank (the same on all), with the layout
        they count in. Empty outside of fitting."""
        trainer = self._trainer
        if trainer is None or getattr(getattr(trainer, "state", None), "fn", None) != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        loader = self._train_loader
        epoch = loader.epoch if loader is not None and loader.epoch >= 0 else trainer.current_epoch
        return {"stream": {"epoch": epoch, "batches": done, **self._layout()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the stream from a :meth:`state_dict` at the next ``train_dataloader``."""
        self._resume = state_dict.get("stream")

    def _resume_position(self, batches: int) -> tuple[int, int]:
        """``(epoch, batches to skip in it)`` from a loaded state; ``(-1, 0)`` without one."""
        if self._resume is None:
            return -1, 0
        state, layout = self._resume, self._layout()
        epoch, done = state["epoch"], state["batches"]
        if any(state.get(k) != v for k, v in layout.items()):
            changed = {k: (state.get(k), v) for k, v in layout.items() if state.get(k) != v}
            samples = done * state["batch_size"] * state["world_size"]
            done = samples // (self.batch_size * layout["world_size"])
            warnings.warn(f"resuming the data stream with a changed layout {changed} (checkpoint, now): "
                          f"carried over by sample count ({samples} samples = {done} batches of this epoch); "
                          f"the batches that follow are a new draw, not those of the original run")
        if done >= batches:
            return epoch + 1, 0
        return epoch, done

    def train_dataloader(self) -> DataLoader:
        """Endless resampled stream cut to the same number of batches on every rank."""
        if self.train_urls is None or self._counts is None:
            raise RuntimeError(f"call {type(self).__name__}.setup('fit') before asking for train_dataloader")
        rank, world_size = self._rank_world()
        batches = self.samples_per_epoch // (self.batch_size * world_size)
        if batches == 0:
            raise ValueError(f"samples_per_epoch={self.samples_per_epoch} gives no full batch of "
                             f"{self.batch_size} on each of {world_size} ranks")
        relayout = self._resume is not None and any(self._resume.get(k) != v for k, v in self._layout().items())
        skip_epoch, skip = self._resume_position(batches)
        self._resume = None  # used once: a reloaded train dataloader continues from the trainer's epoch
        trainer = self._trainer
        if relayout and trainer is not None:
            _set_batches_done(trainer, skip)
        start = trainer.current_epoch if trainer is not None and hasattr(trainer, "current_epoch") else 0
        if skip_epoch >= 0:  # resuming: a checkpoint of an epoch's last batch continues with the next
            start = skip_epoch  # epoch, while Lightning's counter still says the finished one here
        stream = TrainStream(self.train_urls, batches, rank, world_size, self.seed, self.shuffle_buffer,
                             self.assign_sample, self.decode_sample, _collate, self._counts, self.data_guard.watch(),
                             start_epoch=start, skip_epoch=skip_epoch, skip=skip)
        self._train_loader = self._loader(stream, _TrainLoader)
        self._train_loader.next_epoch = start
        return self._train_loader

    @property
    def _trainer(self):
        return getattr(self, "trainer", None)

    def val_dataloader(self) -> DataLoader | list:
        """Each val shard once, in order, split across ranks (see the class docstring).

        Returns an empty list (no validation) when ``val_shards`` is ``None``.
        """
        if self.val_shards is None:
            return []
        if self.val_urls is None:
            raise RuntimeError(f"call {type(self).__name__}.setup('fit' or 'validate') before asking for val_dataloader")
        return self._eval_loader(self.val_urls)

    def test_dataloader(self) -> DataLoader:
        """Like :meth:`val_dataloader`, over ``test_shards`` (or the val shards when not given)."""
        if self.test_urls is None:
            raise RuntimeError(f"call {type(self).__name__}.setup('test') before asking for test_dataloader")
        return self._eval_loader(self.test_urls)

    def _eval_loader(self, urls: list[str]) -> DataLoader:
        rank, world_size = self._rank_world()
        stages = [wds.SimpleShardList(urls)]
        if len(urls) >= world_size:
            stages.append(_SplitByRank(rank, world_size))
        watch = self.data_guard.watch()
        stages += [wds.split_by_worker, watch.shards, wds.tarfile_to_samples(handler=watch.shard_error), watch.samples]
        if self.buckets is None:
            stages += [self._decoder(False, rank, watch), wds.batched(self.batch_size, collation_fn=_collate, partial=True)]
        else:
            stages.append(_EvalBuckets(self.assign_sample, self.decode_sample, self.seed, rank, self._counts, watch))
        return self._loader(wds.DataPipeline(*stages))


class _EvalBuckets:
    """Pipeline stage for evaluation with buckets: plan (with a fixed seed), group by bucket,
    decode from each clip's first frame; the partial groups left at the end are batches too."""

    def __init__(self, assign, decode, seed: int, rank: int, counts: Counters, watch: StreamWatch) -> None:
        self.assign, self.decode, self.seed, self.rank, self.counts = assign, decode, seed, rank, counts
        self.watch = watch

    def __call__(self, samples):
        rng = np.random.default_rng(_stream_seed(self.seed, self.rank, 0))
        self.watch.start()
        for group in plan_and_group(samples, self.assign, rng, self.counts, self.watch, flush=True):
            decoded = decode_group(group, self.decode, False, self.counts, self.watch)
            if decoded:
                yield _collate(decoded)


def sample_caption(sample: dict, caption_field: str | None = None) -> str:
    """A raw sample's caption: its json's ``caption_field`` when that is a non-empty string,
    else its ``txt``. A json that is not an object raises :class:`~lvdm.data.schema.BadMetadataError`
    (the sample is skipped and counted as ``bad_json``)."""
    meta = sample_json(sample)  # checked even when unused: a sample with a broken json is skipped on every path
    value = meta.get(caption_field) if caption_field is not None else None
    if isinstance(value, str) and value.strip():
        return value
    return sample["txt"].decode("utf-8")


#: A video's frame rate when neither its json nor its header gives one (Open-Sora's default)
DEFAULT_FPS = 24.0


def _header_fps(media: bytes) -> float:
    """The frame rate a video's container header states (0 when it states none)."""
    import av

    try:
        with av.open(io.BytesIO(media)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except (av.error.FFmpegError, IndexError) as exc:
        raise ValueError(f"cannot read the video header: {exc}") from exc
    return float(rate) if rate else 0.0


def clip_fps(meta: dict, frame_interval: int, image: bool, media: Optional[bytes] = None) -> float:
    """The fps micro-condition of a training clip, Open-Sora 1.2's rule: an image gets
    :data:`~lvdm.models.contract.IMAGE_FPS` (120); a video its frame rate (``key.json``'s
    ``fps``, else the ``media`` header's, else :data:`DEFAULT_FPS`) ``// frame_interval``,
    the rate of the frames taken (floored, as Open-Sora's datasets)."""
    if image:
        return IMAGE_FPS
    fps = meta.get("fps")
    if not (isinstance(fps, (int, float)) and fps > 0):
        fps = (_header_fps(media) if media is not None else 0.0) or DEFAULT_FPS
    return float(fps // frame_interval)


def _conditions(height: int, width: int, fps: float) -> dict:
    """The micro-condition fields of a sample: pixel ``height``, ``width`` and ``fps``."""
    return {"height": torch.tensor(height, dtype=torch.float32), "width": torch.tensor(width, dtype=torch.float32),
            "fps": torch.tensor(fps, dtype=torch.float32)}


class VideoDataModule(ShardDataModule):
    """Captioned video clips from WebDataset shards (``key.<ext>`` + ``key.txt`` [+ ``key.json``]).

    The media entry may be any container PyAV reads under its own extension (``mp4``, ``webm``,
    ``mkv``, ``mov``, ``avi``, ``gif``) or an image (``jpg``, ``jpeg``, ``png``, ``webp``), which
    is a 1-frame clip: images are read when ``num_frames`` is 1 (with ``buckets``: into the
    1-frame buckets) and otherwise skipped and counted as too short, like any clip with fewer
    frames than asked for.

    Batches are ``{"video": float [B, 3, T, H, W] in [-1, 1], "caption": list[str], "key":
    list[str]}`` and the micro-conditions ``"height"``, ``"width"`` (pixels, ``[B]``) and ``"fps"``
    ``[B]`` (:func:`clip_fps`: 120 for an image, a video's frame rate // frame interval). Clips are decoded on the fly (:func:`lvdm.data.video.decode_clip`): a random
    valid window of each clip in training, from the first frame in validation and test.

    Sampling, rank/worker split, exact per-rank batch counts and validation order are those of
    :class:`ShardDataModule`. Unreadable samples (corrupt or truncated mp4, too few frames,
    missing entries) are skipped with a warning naming the key and shard, and counted in
    ``datamodule.skipped``.

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
        test_shards: Shards for ``lvdm test``, same forms; ``None`` uses ``val_shards``.
        buckets: Resolution / aspect / duration buckets (:class:`lvdm.data.buckets.BucketConfig`):
            each clip is cut, resized and cropped to its bucket's shape and batched with its
            bucket; ``num_frames``, ``frame_interval`` and ``resolution`` are then unused (the
            buckets give them) and ``batch_size`` only sizes the epoch. A clip's size and length
            come from its ``key.json`` (``height``, ``width``, ``frames``) or else its header.
        data_guard: limits on skipped samples and time without a sample (see :class:`ShardDataModule`).
        caption_field: train on this json field's caption (e.g. ``caption_vlm``, written by
            ``lvdm data caption``) instead of ``key.txt``; a sample whose field is missing or
            empty (its captioning failed) uses its ``key.txt``. ``None``: always ``key.txt``.
        max_decoded_bytes: most bytes decoded for one clip (frames x height x width x 3, frames
            passed over to reach a random start included; default 2 GiB): a clip that needs
            more is skipped as ``too_large`` — from its header before decoding, or as soon as
            its decoded frames pass it — and random starts are drawn among those it affords
            (:func:`lvdm.data.video.decode_clip`). Bounds a decode bomb: a 46 KB GIF of 2000
            frames of 4000x4000 decodes to 96 GB.
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
        test_shards: str | list[str] | None = None,
        buckets: Optional[BucketConfig] = None,
        data_guard: DataGuard | None = None,
        caption_field: str | None = None,
        max_decoded_bytes: int = MAX_DECODED_BYTES,
    ) -> None:
        super().__init__(train_shards, val_shards, batch_size=batch_size, num_workers=num_workers,
                         samples_per_epoch=samples_per_epoch, shuffle_buffer=shuffle_buffer, seed=seed,
                         test_shards=test_shards, buckets=buckets, data_guard=data_guard)
        if num_frames < 1 or frame_interval < 1:
            raise ValueError(f"VideoDataModule.num_frames and frame_interval must be >= 1, got {num_frames}, {frame_interval}")
        sizes = [resolution] if isinstance(resolution, int) else list(resolution)
        if len(sizes) not in (1, 2) or any(not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(f"VideoDataModule.resolution must be a positive int or (height, width), got {resolution}")
        if max_decoded_bytes < 1:
            raise ValueError(f"VideoDataModule.max_decoded_bytes must be >= 1, got {max_decoded_bytes}")
        self.max_decoded_bytes = max_decoded_bytes
        self.num_frames, self.frame_interval, self.resolution = num_frames, frame_interval, resolution
        self.caption_field = caption_field

    def assign_sample(self, sample: dict, rng: np.random.Generator):
        """The clip's bucket from its size and length (``key.json`` or the video header)."""
        if self.buckets is None:
            return super().assign_sample(sample, rng)
        height, width, frames = sample_size(sample)
        bucket, reason = self.buckets.assign(height, width, frames, rng)
        return (bucket.name, bucket.batch_size, bucket) if bucket is not None else reason

    def decode_sample(self, sample: dict, rng: np.random.Generator, random_start: bool,
                      bucket: Optional[Bucket] = None) -> dict:
        """``key.<ext>`` → ``"video"`` ``[3, T, H, W]`` (the bucket's shape, if any) with its
        ``"height"``, ``"width"`` and ``"fps"``; ``key.txt`` (or the json's ``caption_field``) →
        ``"caption"``."""
        ext, media = media_entry(sample)
        caption = sample_caption(sample, self.caption_field)  # before decoding: a bad json costs no decode
        frames, interval, size = self.num_frames, self.frame_interval, self.resolution
        if bucket is not None:
            frames, interval, size = bucket.num_frames, self.buckets.frame_interval, (bucket.height, bucket.width)
        video = decode_clip(media, frames, interval, size,
                            random_start=random_start, rng=rng, name=repr(sample.get("__key__")),
                            max_decoded_bytes=self.max_decoded_bytes)
        fps = clip_fps(sample_json(sample), interval, media_kind(ext) == "image", media)
        return {"video": video, "caption": caption, **_conditions(*video.shape[-2:], fps)}


class LatentDataModule(ShardDataModule):
    """Precomputed raw latents from latent shards (``key.latent.npy`` + ``key.txt`` + ``key.json``).

    The shards are written by ``lvdm data encode`` (:func:`lvdm.curation.encode.encode_shards`).

    Batches are ``{"latent": float32 [B, c, t, h, w] raw latents, "caption": list[str], "key":
    list[str]}``, the micro-conditions ``"height"``, ``"width"`` (the encoded clip's pixel size)
    and ``"fps"`` when the ``key.json`` records the size (as ``lvdm data encode`` writes it), plus ``"text"`` ``[B, L, dim]``, ``"text_mask"`` ``[B, L]`` and
    ``"text_encoder_identity"`` when the shards cache caption embeddings. The latents are *raw*:
    :class:`lvdm.training.module.LatentDiffusionModule` normalises them with its compressor's
    ``scale_factor``/``shift_factor``, so the model's compressor must be the one that encoded
    the shards (checked at ``setup``), and it refuses batches whose cached text another encoder
    made (:mod:`lvdm.text.identity`). Reading a latent costs no video decoding (and a cached
    embedding no text encoder), which makes this the fast data path for training.

    Shards encoded with buckets (``lvdm data encode --buckets``) are batched by the bucket in
    their ``key.json`` when ``buckets`` is given, with that bucket's batch size from it.

    Sampling, rank/worker split, exact per-rank batch counts and validation order are those of
    :class:`ShardDataModule`. Unreadable samples (a corrupt or non-4-D ``.latent.npy``, missing
    entries) are skipped with a warning and counted in ``datamodule.skipped``; latents of
    different shapes in one batch raise a ``ValueError`` naming their keys.

    Args:
        train_shards: Train latent shards: a directory, glob, brace pattern, file, or a list of these.
        val_shards: Validation latent shards, same forms; ``None`` for no validation.
        batch_size: Latents per batch on each rank.
        num_workers: DataLoader worker processes per rank (0 reads in the main process).
        samples_per_epoch: Train samples per epoch over all ranks (rounded down to whole batches).
        shuffle_buffer: Samples held in the train shuffle buffer (0 or 1 disables shuffling).
        seed: Seed for shard sampling and shuffling.
        test_shards: Shards for ``lvdm test``, same forms; ``None`` uses ``val_shards``.
        buckets: The bucket config the shards were encoded with (for the batch sizes); ``None``
            batches every latent alike.
        data_guard: Limits on skipped samples and time without a sample (``None``: defaults).
        num_frames: take this many consecutive latent frames of each clip (a random window in
            training, the first in evaluation); ``1`` makes an image phase from video latents
            (single frames, Open-Sora's stage 1). ``None``: whole clips.
    """

    def __init__(self, *args, num_frames: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # ShardDataModule's arguments (the CLI reads them from there)
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 (or None for whole clips), got {num_frames}")
        self.num_frames = num_frames

    def setup(self, stage: str | None = None) -> None:
        """As :meth:`ShardDataModule.setup`; when a trainer's model has a ``compressor``, also
        refuses train shards that another compressor encoded (:func:`lvdm.data.shards.check_latent_compressor`)."""
        super().setup(stage)
        compressor = getattr(getattr(getattr(self, "trainer", None), "lightning_module", None), "compressor", None)
        if compressor is not None and self.train_urls and stage in (None, "fit"):
            from lvdm.data.shards import check_latent_compressor

            check_latent_compressor(self.train_urls[0], compressor)

    def assign_sample(self, sample: dict, rng: np.random.Generator):
        """With ``buckets``: the bucket ``lvdm data encode`` wrote in ``key.json`` (its batch
        size from the config; ``not_in_config`` if the config lacks it), else the latent's
        shape (``batch_size``), read from the ``.npy`` header."""
        if self.buckets is None:
            return super().assign_sample(sample, rng)
        meta = sample_json(sample)
        bucket = meta.get("bucket")
        if bucket is None:
            return _npy_shape(sample["latent.npy"]), self.batch_size, None
        frames = self.buckets.resolutions.get(bucket["resolution"], {}).get(bucket["num_frames"])
        if frames is None:
            return "not_in_config"
        return bucket["name"], frames[1], None

    def decode_sample(self, sample: dict, rng: np.random.Generator, random_start: bool,
                      bucket: Optional[Bucket] = None) -> dict:
        """``key.latent.npy`` → ``"latent"`` float32 ``[c, t, h, w]``, ``key.txt`` → ``"caption"``."""
        try:
            latent = np.load(io.BytesIO(sample["latent.npy"]), allow_pickle=False)
        except (OSError, EOFError) as exc:  # np.load's errors for truncated or foreign data
            raise ValueError(f"cannot read latent.npy: {exc}") from exc
        if latent.ndim != 4:
            raise ValueError(f"latent has shape {list(latent.shape)}; expected 4-D [c, t, h, w]")
        if self.num_frames is not None:
            if latent.shape[1] < self.num_frames:
                raise ValueError(f"latent has {latent.shape[1]} frames, fewer than num_frames={self.num_frames}")
            start = int(rng.integers(latent.shape[1] - self.num_frames + 1)) if random_start else 0
            latent = latent[:, start : start + self.num_frames]
        meta = sample_json(sample)
        out = {"latent": torch.from_numpy(latent.astype(np.float32)), "caption": sample["txt"].decode("utf-8"),
               **self._latent_conditions(meta, self.num_frames == 1)}
        if "text.npy" in sample:
            out["text"] = torch.from_numpy(_load_npy(sample, "text.npy").astype(np.float32))
            out["text_mask"] = torch.from_numpy(_load_npy(sample, "text_mask.npy").astype(bool))
            out["text_encoder_identity"] = meta.get("text_encoder_identity")
        return out


    def _latent_conditions(self, meta: dict, one_frame: bool) -> dict:
        """``height``, ``width`` (the pixel size ``lvdm data encode`` cut the clip to) and ``fps``
        (:func:`clip_fps`; a single latent frame taken with ``num_frames=1`` is an image) of a
        latent sample, from its ``key.json``; nothing when the json does not record the size."""
        bucket = meta.get("bucket")
        size = (bucket.get("height"), bucket.get("width")) if isinstance(bucket, dict) else meta.get("resolution")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size)):
            return {}
        interval = meta.get("frame_interval") or (self.buckets.frame_interval if self.buckets is not None else 1)
        image = one_frame or meta.get("kind") == "image" or meta.get("frames") == 1
        return _conditions(*size, clip_fps(meta, int(interval), image))


def _load_npy(sample: dict, entry: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(sample[entry]), allow_pickle=False)
    except (OSError, EOFError) as exc:  # np.load's errors for truncated or foreign data
        raise ValueError(f"cannot read {entry}: {exc}") from exc


def _npy_shape(data: bytes) -> tuple[int, ...]:
    """The array shape in a ``.npy`` file's header, reading nothing else."""
    buffer = io.BytesIO(data)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(buffer)
        if version not in ((1, 0), (2, 0)):  # no public header reader: load the array
            return tuple(np.load(io.BytesIO(data), allow_pickle=False).shape)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, _ = read(buffer)
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"cannot read latent.npy header: {exc}") from exc
    return tuple(shape)
