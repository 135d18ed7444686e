"""Precompute a compressor's raw latents once: video shards → latent shards.

Decoding an mp4 clip costs milliseconds of CPU per sample on every epoch; a latent shard
stores the compressor's *raw* latent instead (``key.latent.npy``), so training reads a small
array and skips both video decoding and the compressor's encoder. Raw rather than normalised
latents are stored (as in NVlabs/edm2), so the shards stay valid when ``scale_factor`` or
``shift_factor`` change; :class:`lvdm.data.datamodule.LatentDataModule` reads them back.

With a text encoder the caption embeddings are cached too (the encoder runs once per caption,
not once per training step), and with buckets each clip is stored at its bucket's shape.
Both record the identity of the part that made them (the compressor's
:meth:`~lvdm.compressors.base.Compressor.identity`, the text encoder's
:func:`lvdm.text.identity.identity`), and training refuses a cache made by another.
"""

from __future__ import annotations

import json
import os
import zlib
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from lvdm.compressors.base import Compressor
from lvdm.compressors.pixels import PixelCompressor
from lvdm.data.buckets import BucketConfig, sample_size
from lvdm.text.identity import identity
from lvdm.data.schema import media_entry
from lvdm.data.shards import is_remote, resolve_shards
from lvdm.data.video import decode_clip
from lvdm.text.base import TextEncoder

__all__ = ["encode_shards"]


def _output_names(urls: list[str], root: Path) -> list[str]:
    """The output shard names (the input file names), refused when two inputs share a name or
    when an output would overwrite its input."""
    names = [os.path.basename(url) for url in urls]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"input shards share file names {twice}; output shards keep the input names, "
                         f"so encode each set into its own out directory")
    if any(not is_remote(url) and Path(url).resolve() == (root / name).resolve() for url, name in zip(urls, names)):
        raise ValueError(f"out={root} is the directory of the input shards; the latent shards would overwrite them")
    return names


def _copy_prompt_files(urls: list[str], root: Path) -> None:
    """Copy the ``*.txt`` files (``val_prompts.txt``…) of the input shards' directory to ``root``
    when all inputs lie in one local directory."""
    parents = {os.path.dirname(os.path.abspath(url)) for url in urls if not is_remote(url)}
    if len(parents) == 1 and not any(is_remote(url) for url in urls):
        for prompts in sorted(Path(parents.pop()).glob("*.txt")):
            shutil.copy(prompts, root / prompts.name)


def encode_shards(
    shards: str | list[str],
    out: str,
    compressor: Compressor | None = None,
    num_frames: int = 8,
    frame_interval: int = 1,
    resolution: int | tuple[int, int] = 32,
    batch_size: int = 16,
    dtype: str = "float16",
    device: str = "cpu",
    buckets: BucketConfig | None = None,
    text_encoder: TextEncoder | None = None,
    seed: int = 0,
) -> dict:
    """Encode video shards into latent shards of raw compressor latents, for LatentDataModule.

    Each input shard is read once, in order; every clip (any video or image extension of
    :mod:`lvdm.data.schema`; an image is a 1-frame clip) is decoded from its first frame like
    validation clips (:func:`lvdm.data.video.decode_clip`) and encoded with
    ``compressor.encode_raw``. Each input shard gives one output shard of the same file name
    in ``out`` (``train-000000.tar`` → ``out/train-000000.tar``) holding, per clip,
    ``key.latent.npy`` (the raw latent ``[c, t, h, w]``), ``key.txt`` (the caption, unchanged)
    and ``key.json`` (the input metadata plus ``latent_shape``, ``compressor``,
    ``compressor_config_hash`` (:meth:`~lvdm.compressors.base.Compressor.identity`), ``scale_factor``,
    ``shift_factor``, ``num_frames``, ``frame_interval`` and ``resolution``).

    With ``buckets``, each clip goes to its bucket (:meth:`lvdm.data.buckets.BucketConfig.assign`,
    drawn from a generator seeded by ``seed`` and the key, so re-encoding gives the same
    buckets), is cut, resized and cropped to that bucket's shape, and its ``key.json`` records
    the ``bucket`` (``name``, ``resolution``, ``num_frames``, ``height``, ``width``), which
    :class:`~lvdm.data.datamodule.LatentDataModule` batches by; ``num_frames``,
    ``frame_interval`` and ``resolution`` are then unused. Clips that fit no bucket are counted
    in the summary's ``unfit``. With ``text_encoder``, ``key.text.npy`` (``[L, dim]``, in
    ``dtype``) and ``key.text_mask.npy`` (``[L]`` bool) hold the caption's embedding and
    ``key.json`` the encoder's ``text_encoder_identity``.
    Unreadable clips are skipped with a warning naming the key and shard, and counted. When
    all input shards lie in one local directory, its ``*.txt`` files (e.g. ``val_prompts.txt``)
    are copied to ``out`` too.

    Args:
        shards: Video shards: a directory, glob, brace pattern, file, or a list of these.
        out: Output directory for the latent shards (created if needed).
        compressor: The compressor whose raw latents to store (default: the identity,
            :class:`~lvdm.compressors.pixels.PixelCompressor`). Train with the same one.
        num_frames: Frames per clip.
        frame_interval: Step between taken frames (1 = consecutive frames).
        resolution: Clip ``(height, width)``, or one int for a square; videos are resized to
            cover it and centre-cropped.
        batch_size: Clips encoded together.
        dtype: numpy floating dtype the latents are stored in (``float16`` halves the size).
        device: Torch device the compressor runs on (``cpu``, ``cuda``, ``cuda:1``...).
        buckets: Resolution / aspect / duration buckets to store each clip at; ``None`` for one shape.
        text_encoder: A frozen text encoder whose caption embeddings to cache; ``None`` for none.
        seed: Seed of the bucket draws.

    Returns:
        Summary dict: ``out``, ``shards`` (written paths), ``encoded``, ``skipped``, ``unfit``
        (by reason), ``latent_shape`` (of the last batch), ``buckets`` (clips per bucket),
        ``seconds``.
    """
    store = _store_dtype(dtype, batch_size)
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    compressor, text_encoder = _prepare_models(compressor, text_encoder, device, buckets, num_frames, size)
    urls, root = resolve_shards(shards), Path(out)
    names = _output_names(urls, root)
    root.mkdir(parents=True, exist_ok=True)
    reader = _ClipReader(buckets, num_frames, frame_interval, size, seed)
    encoder = _ShardEncoder(compressor, text_encoder, device, store, reader.recorded(compressor, text_encoder),
                            batch_size, reader)
    start = time.perf_counter()
    with encoder.bar:
        for url, name in zip(urls, names):
            encoder.write_shard(url, root / name)
    _copy_prompt_files(urls, root)
    summary = {"out": str(root), **encoder.summary, "seconds": round(time.perf_counter() - start, 2)}
    print(f"encoded {summary['encoded']} clips into {len(summary['shards'])} latent shards in {root}/ "
          f"(latent {summary['latent_shape']} {store.name}), skipped {summary['skipped']}, "
          f"{'unfit ' + str(summary['unfit']) + ', ' if summary['unfit'] else ''}{summary['seconds']} s")
    return summary


def _store_dtype(dtype: str, batch_size: int) -> np.dtype:
    """The numpy dtype latents are stored in, after checking it and the batch size."""
    store = np.dtype(dtype)
    if store.kind != "f":
        raise ValueError(f"dtype must be a numpy floating type such as 'float16' or 'float32', got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return store


def _prepare_models(compressor: Compressor | None, text_encoder: TextEncoder | None, device: str,
                    buckets: BucketConfig | None, num_frames: int, size: tuple[int, int]):
    """The compressor (default: the identity) and frozen text encoder on ``device``; fails early
    when a clip or bucket size does not fit the compressor's downsampling, or when the text
    encoder is trained (its embeddings cannot be cached)."""
    compressor = (compressor or PixelCompressor()).to(device)
    if buckets is None:
        compressor.latent_shape(num_frames, *size)
    else:
        for bucket in buckets.buckets():
            compressor.latent_shape(bucket.num_frames, bucket.height, bucket.width)
    if text_encoder is not None:
        if text_encoder.trainable:
            raise ValueError(f"{type(text_encoder).__name__} is trained with the DiT: its embeddings change "
                             f"during training and cannot be cached; cache only a frozen encoder (T5, CLIP)")
        text_encoder = text_encoder.to(device).eval()
    return compressor, text_encoder


class _ClipReader:
    """Decodes a sample's clip at the one clip shape, or at its bucket's shape, counting the
    samples that fit no bucket (``unfit``, by reason) and the clips per bucket."""

    def __init__(self, buckets: BucketConfig | None, num_frames: int, frame_interval: int,
                 size: tuple[int, int], seed: int):
        self.buckets, self.num_frames, self.frame_interval = buckets, num_frames, frame_interval
        self.size, self.seed = size, seed
        self.unfit: dict[str, int] = {}
        self.per_bucket: dict[str, int] = {}

    def recorded(self, compressor: Compressor, text_encoder: TextEncoder | None) -> dict:
        """What every latent's ``key.json`` records of how it was made: the compressor's identity
        (class, config hash, scale and shift factors), the clip shape (without buckets) and the
        text encoder's identity."""
        extra = dict(compressor.identity())
        if self.buckets is None:
            extra.update({"num_frames": self.num_frames, "frame_interval": self.frame_interval,
                          "resolution": list(self.size)})
        if text_encoder is not None:
            extra["text_encoder_identity"] = identity(text_encoder)
        return extra

    def __call__(self, sample: dict, key: str) -> tuple[object, torch.Tensor | None, dict]:
        """(bucket group, decoded clip, bucket metadata) of a sample; a clip of None fits no bucket."""
        media = media_entry(sample)[1]
        if self.buckets is None:
            return None, decode_clip(media, self.num_frames, self.frame_interval, self.size, name=repr(key)), {}
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        bucket, reason = self.buckets.assign(*sample_size(sample), rng)
        if bucket is None:
            self.unfit[reason] = self.unfit.get(reason, 0) + 1
            return None, None, {}
        clip = decode_clip(media, bucket.num_frames, self.buckets.frame_interval, (bucket.height, bucket.width),
                           name=repr(key))
        self.per_bucket[bucket.name] = self.per_bucket.get(bucket.name, 0) + 1
        return bucket.name, clip, {"bucket": {"name": bucket.name, "resolution": bucket.resolution,
                                              "num_frames": bucket.num_frames, "height": bucket.height,
                                              "width": bucket.width}}


Pending = list[tuple[str, torch.Tensor, bytes, dict]]  # (key, clip, caption, json) of clips to encode together


class _ShardEncoder:
    """Reads video shards and writes latent shards, batching clips of one shape."""

    def __init__(self, compressor: Compressor, text_encoder: TextEncoder | None, device: str, store: np.dtype,
                 extra: dict, batch_size: int, read_clip: _ClipReader):
        self.compressor, self.text_encoder, self.device, self.store = compressor, text_encoder, device, store
        self.extra, self.batch_size, self.read_clip = extra, batch_size, read_clip
        self.shards: list[str] = []
        self.encoded = self.skipped = 0
        self.latent_shape: list[int] | None = None
        self.bar = tqdm(desc="encoding clips", unit="clip")

    @property
    def summary(self) -> dict:
        return {"shards": self.shards, "encoded": self.encoded, "skipped": self.skipped,
                "latent_shape": self.latent_shape, "unfit": self.read_clip.unfit,
                "buckets": self.read_clip.per_bucket}

    def write_shard(self, url: str, path: Path) -> None:
        """Encode every readable clip of shard ``url`` into the latent shard ``path``."""
        with wds.TarWriter(str(path)) as sink:
            pending: dict[object, Pending] = {}  # per bucket
            for sample in wds.WebDataset(url, shardshuffle=False):
                read = self._read(sample, url)
                if read is None:
                    continue
                group, entry = read
                batch = pending.setdefault(group, [])
                batch.append(entry)
                if len(batch) == self.batch_size:
                    self._encode(pending.pop(group), sink)
            for batch in pending.values():
                self._encode(batch, sink)
        self.shards.append(str(path))

    def _read(self, sample: dict, url: str) -> tuple[object, tuple[str, torch.Tensor, bytes, dict]] | None:
        """(bucket group, pending entry) of a sample; None when it is unreadable (skipped with a
        warning naming it) or fits no bucket."""
        key = sample["__key__"]
        try:
            group, clip, bucket_meta = self.read_clip(sample, key)
            text = sample["txt"]
            meta = json.loads(sample["json"]) if "json" in sample else {}
            if not isinstance(meta, dict):  # valid JSON, but not the metadata object
                raise ValueError(f"key.json is a JSON {type(meta).__name__}, not an object")
        except (ValueError, KeyError) as exc:  # corrupt/short video, bad json, missing entry
            self.skipped += 1
            warnings.warn(f"skipping sample {key!r} in shard {url}: {type(exc).__name__}: {exc}")
            return None
        return None if clip is None else (group, (key, clip, text, {**meta, **bucket_meta}))

    def _encode(self, batch: Pending, sink: wds.TarWriter) -> None:
        with torch.no_grad():
            latents = self.compressor.encode_raw(torch.stack([clip for _, clip, _, _ in batch]).to(self.device))
            if self.text_encoder is not None:
                ctx, mask = self.text_encoder([text.decode("utf-8") for _, _, text, _ in batch])
                texts = zip(ctx.float().cpu().numpy().astype(self.store), mask.cpu().numpy())
            else:
                texts = [None] * len(batch)
        for (key, _, text, meta), latent, embedded in zip(batch, latents.float().cpu().numpy().astype(self.store),
                                                          texts):
            entry = {"__key__": key, "latent.npy": latent, "txt": text,
                     "json": {**meta, "latent_shape": list(latent.shape), **self.extra}}
            if embedded is not None:
                entry["text.npy"], entry["text_mask.npy"] = embedded
            sink.write(entry)
        self.latent_shape = list(latents.shape[1:])
        self.encoded += len(batch)
        self.bar.update(len(batch))
