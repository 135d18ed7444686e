"""WebDataset shard writing and shard-list resolution.

A sample is stored in a tar shard as three entries sharing one key: ``key.mp4`` (the video),
``key.txt`` (the caption) and ``key.json`` (metadata: at least fps, frames, height, width).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import braceexpand
import webdataset as wds

__all__ = ["write_shards", "resolve_shards"]

_REQUIRED = ("key", "mp4", "txt", "json")


def write_shards(samples: Iterable[dict], pattern: str, max_count: int = 1000) -> list[str]:
    """Write samples into WebDataset tar shards.

    Args:
        samples: Dicts ``{"key": str, "mp4": bytes, "txt": str, "json": dict}``.
        pattern: Shard path with a printf field for the shard index, e.g. ``out/train-%06d.tar``;
            parent folders are created.
        max_count: Maximum number of samples per shard.

    Returns:
        The written shard paths, in order.
    """
    if "%" not in pattern:
        raise ValueError(f"shard pattern {pattern!r} needs a printf field for the index, e.g. 'train-%06d.tar'")
    Path(pattern % 0).parent.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=max_count, post=written.append, verbose=0) as sink:
        for sample in samples:
            missing = [k for k in _REQUIRED if k not in sample]
            if missing:
                raise KeyError(f"sample {sample.get('key', '<no key>')!r} lacks {missing}")
            sink.write({"__key__": sample["key"], "mp4": sample["mp4"], "txt": sample["txt"], "json": sample["json"]})
    return written


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
