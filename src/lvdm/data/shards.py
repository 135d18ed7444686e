"""WebDataset shard writing and shard-list resolution.

A sample is stored in a tar shard as three entries sharing one key: ``key.<ext>`` (the media
bytes under their real extension: ``mp4``, ``webm``, ``jpg``... — see
:mod:`lvdm.data.schema`), ``key.txt`` (the caption) and ``key.json`` (metadata: at least fps,
frames, height, width).
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from pathlib import Path

import braceexpand

from lvdm.data.schema import InvalidSampleError, MEDIA_EXTENSIONS, check_key, check_media, sample_json

if TYPE_CHECKING:  # importing torch here would cost every curation worker
    from lvdm.compressors.base import Compressor

__all__ = ["ShardWriter", "check_latent_compressor", "write_shards", "read_shard", "resolve_shards"]


def _validated(sample: dict, seen: set[str]) -> dict:
    """The tar entries of one sample after checking its key and media (raises InvalidSampleError)."""
    if not isinstance(sample, dict) or "key" not in sample:
        raise InvalidSampleError(f"a sample must be a dict with a 'key', got {type(sample).__name__} "
                                 f"{sorted(sample) if isinstance(sample, dict) else ''}")
    key = check_key(sample["key"])
    if key in seen:
        raise InvalidSampleError(f"sample key {key!r} is written twice: webdataset would merge or drop one of "
                                 f"the two samples; keys must be unique (lvdm.data.schema.assign_keys)")
    media = [ext for ext in MEDIA_EXTENSIONS if ext in sample]
    other = sorted(set(sample) - {"key", "txt", "json", *media})
    missing = [name for name in ("txt", "json") if name not in sample]
    if len(media) != 1 or other or missing:
        raise InvalidSampleError(
            f"sample {key!r} must hold exactly one media entry ({', '.join(MEDIA_EXTENSIONS)}), 'txt' and "
            f"'json'; it has media {media}, missing {missing}, unknown {other}")
    check_media(media[0], sample[media[0]], key)
    seen.add(key)
    return {f"{key}.{media[0]}": bytes(sample[media[0]]), f"{key}.txt": _encoded(sample["txt"]),
            f"{key}.json": _encoded(sample["json"])}


def _encoded(value) -> bytes:
    """Entry bytes: bytes as they are, text as UTF-8, anything else as json."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8")


class _Tar:
    """A plain tar of sample entries, as webdataset's TarWriter writes them. Written with the
    standard library because importing webdataset imports torch, which would cost every
    curation worker process seconds of start-up for nothing."""

    def __init__(self, path: str) -> None:
        self._tar = tarfile.open(path, "w")

    def write(self, entries: dict[str, bytes]) -> None:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            # mtime 0: the same samples give the same bytes, whenever and wherever (local or Ray) written
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


class ShardWriter:
    """Write validated samples into numbered tar shards, ``max_count`` samples per shard.

    Each sample is checked before anything is written (:func:`write_shards` lists the checks);
    a refused sample raises :class:`~lvdm.data.schema.InvalidSampleError` naming its key. A
    shard is written under a temporary name (``.partial``) and renamed when complete; leaving
    the ``with`` block on an error discards the shard being written, so a failed or
    interrupted run never leaves a truncated shard under a final name.

    Args:
        pattern: Shard path with a printf field for the shard index, e.g. ``out/shard-%06d.tar``;
            parent folders are created. With ``max_count=None`` it may be a plain path.
        max_count: Maximum number of samples per shard; ``None`` writes one shard of any size.
        start_index: Index of the first shard.
    """

    def __init__(self, pattern: str, max_count: int | None = 1000, start_index: int = 0) -> None:
        if max_count is None and "%" not in pattern:
            pattern = pattern + "%.0s"  # a plain path: the index is formatted away
        elif "%" not in pattern:
            raise ValueError(f"shard pattern {pattern!r} needs a printf field for the index, e.g. 'shard-%06d.tar'")
        elif max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        self.pattern, self.max_count, self.index = pattern, max_count, start_index
        self.paths: list[str] = []
        self._seen: set[str] = set()
        self._tar: _Tar | None = None
        self._count = 0
        Path(pattern % start_index).parent.mkdir(parents=True, exist_ok=True)

    def write(self, sample: dict) -> str:
        """Write one sample ``{"key", <ext>: bytes, "txt": str, "json": dict}``; returns the path
        of the shard it went into."""
        entries = _validated(sample, self._seen)
        if self._tar is None:
            self._path = self.pattern % self.index
            self._tar = _Tar(self._path + ".partial")
            self.index += 1
        self._tar.write(entries)
        self._count += 1
        path = self._path
        if self._count == self.max_count:  # publish a full shard at once
            self._finish()
        return path

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self._path + ".partial", self._path)
            self.paths.append(self._path)
            self._tar, self._count = None, 0

    def close(self) -> None:
        """Close and publish the last shard."""
        self._finish()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()
            os.remove(self._path + ".partial")
            self._tar = None


def write_shards(samples: Iterable[dict], pattern: str, max_count: int = 1000) -> list[str]:
    """Write samples into WebDataset tar shards.

    Refused with :class:`~lvdm.data.schema.InvalidSampleError` (a ``ValueError`` naming the
    key): keys webdataset would split or drop (empty, containing ``.``, ``/`` or ``\\``, or
    repeated), samples without exactly one media entry plus ``txt`` and ``json``, and media
    that is empty, not a media file, or of another container than its extension says (a webm
    stored as ``.mp4``). Only the signature is read: a truncated body passes, and readers
    skip and count it.

    Args:
        samples: Dicts ``{"key": str, <ext>: bytes, "txt": str, "json": dict}`` where ``<ext>``
            is one of :data:`lvdm.data.schema.MEDIA_EXTENSIONS`.
        pattern: Shard path with a printf field for the shard index, e.g. ``out/train-%06d.tar``;
            parent folders are created.
        max_count: Maximum number of samples per shard.

    Returns:
        The written shard paths, in order.
    """
    with ShardWriter(pattern, max_count=max_count) as sink:
        for sample in samples:
            sink.write(sample)
    return sink.paths


def read_shard(path: str | os.PathLike):
    """Yield the samples of one local tar shard, in order, as ``{"__key__": key, ext: bytes}``.

    Entries are grouped as webdataset groups them (key = the entry name up to the first dot of
    its base name; a sample's entries are consecutive). Uses the standard library only, so
    curation workers need not import webdataset (and with it torch).
    """
    current: dict | None = None
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current


def is_remote(spec: str) -> bool:
    """A URL or a ``pipe:`` command (webdataset opens it), not a local path."""
    return "://" in spec or spec.startswith("pipe:")


def _resolve_one(spec: str) -> list[str]:
    if is_remote(spec):  # URLs and pipe: commands are webdataset's business; only expand braces
        return list(braceexpand.braceexpand(spec))
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.tar")))
        if not found:
            raise FileNotFoundError(f"no *.tar shards in directory {spec}")
        return found
    expanded = list(braceexpand.braceexpand(path))
    if len(expanded) > 1 or expanded[0] != path:
        missing = [p for p in expanded if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"shard {missing[0]}{more} from pattern {spec} does not exist")
        return expanded
    if glob.has_magic(path):
        found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(f"no shard matches {spec}")
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"shard {spec} does not exist")
    return [path]


def resolve_shards(spec: str | Sequence[str]) -> list[str]:
    """Turn a shard specification into a list of shard paths, checking that they exist.

    Args:
        spec: A directory (all its ``*.tar``, sorted), a glob (``data/train-*.tar``, sorted), a
            brace pattern (``data/train-{000000..000003}.tar``, in order), a single file, or a list
            of these (concatenated in order). Remote URLs (``s3://``, ``https://``, ``pipe:``) are
            brace-expanded and passed through unchecked.

    Returns:
        Shard paths.

    Raises:
        FileNotFoundError: naming the path or pattern that matched nothing or does not exist.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise FileNotFoundError("empty shard specification: no shards given")
    return [path for one in specs for path in _resolve_one(os.fspath(one))]


def check_latent_compressor(url: str, compressor: Compressor) -> None:
    """Refuse latent shards that another compressor encoded.

    Reads the first sample's ``key.json`` of the shard ``url`` and compares the class and
    ``compressor_config_hash`` recorded by :func:`encode_shards` with ``compressor.identity()``.
    Raises ``ValueError`` naming the shard and both compressors when they differ (a diffusion
    model trained on another compressor's latents learns a space its decoder cannot read).
    Shards written before hashes were recorded are checked by class only, with a warning.
    """
    import webdataset as wds

    sample = next(iter(wds.WebDataset(url, shardshuffle=False, empty_check=False)), None)
    if sample is None or "json" not in sample:
        raise ValueError(f"latent shard {url} has no sample with a key.json; write it with `lvdm data encode`")
    meta = sample_json(sample)
    ours = compressor.identity()
    stored_class, stored_hash = meta.get("compressor"), meta.get("compressor_config_hash")
    if stored_class != ours["compressor"] or (stored_hash is not None and stored_hash != ours["compressor_config_hash"]):
        raise ValueError(
            f"latent shard {url} was encoded by {stored_class} (config hash {stored_hash}), but the model's compressor "
            f"is {ours['compressor']} (config hash {ours['compressor_config_hash']}): re-encode the shards with this "
            "compressor (`lvdm data encode`), or train with the compressor that wrote them")
    if stored_hash is None:
        warnings.warn(f"latent shard {url} records no compressor_config_hash (written by an older lvdm); "
                      f"only its compressor class {stored_class} was checked")
