"""Reading samples from a dataset folder and writing a copy whose json fields changed.

A dataset folder is ``shard-*.tar`` + ``manifest.parquet`` + ``rejects.csv``
(:mod:`lvdm.data.schema`). Stages that only add json fields (scores, captions) rewrite each shard
entry by entry: media and caption bytes are copied as they are, never decoded or re-encoded.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from lvdm.data import schema

__all__ = ["split_name", "media_of", "meta_of", "error_text", "release", "read_manifest", "work_items", "read_samples", "rewrite_shard",
           "prepare_output", "write_updated_folder"]



def split_name(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a tar entry name as webdataset splits it: at the first dot of the
    base name (``dir/clip.mp4`` → ``("dir/clip", "mp4")``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def read_manifest(folder: str | Path):
    """The manifest of a dataset folder, checked to have ``key`` and ``shard`` columns."""
    path = Path(folder) / schema.MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a dataset folder: {path} does not exist (write one with `lvdm data ingest`)")
    manifest = schema.read_manifest(path)
    for column in ("key", "shard"):
        if column not in manifest.columns:
            raise ValueError(f"manifest {path} has no {column!r} column")
    return manifest


def work_items(folder: str | Path, chunk_size: int) -> list[tuple[str, list[str]]]:
    """The samples of a dataset folder as ``(shard path, keys)`` chunks, in manifest order."""
    manifest = read_manifest(folder)
    items = []
    for shard, group in manifest.groupby("shard", sort=False):
        path = Path(folder) / shard
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} named by {Path(folder) / schema.MANIFEST_NAME} does not exist")
        keys = list(group["key"])
        items += [(str(path), keys[i : i + chunk_size]) for i in range(0, len(keys), chunk_size)]
    return items


def read_samples(shard: str, keys: Sequence[str]) -> dict[str, dict[str, bytes]]:
    """The entries (``{extension: bytes}``) of the samples ``keys`` in one tar shard; a key the
    shard does not hold is absent from the result. Stops reading after the last one."""
    wanted, found = set(keys), {}
    with tarfile.open(shard, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            if key in wanted:
                found.setdefault(key, {})[ext] = tar.extractfile(member).read()
            elif len(found) == len(wanted):  # webdataset keeps a sample's entries together
                break
    return found


def rewrite_shard(item: tuple[str, str, Mapping[str, Mapping[str, Any]]]) -> int:
    """Copy shard ``src`` to ``dst``, merging ``updates[key]`` into each sample's json; every other
    entry is copied byte for byte. Written under ``dst.partial`` and renamed when complete.
    Returns the number of json entries changed."""
    src, dst, updates = item
    partial, changed = f"{dst}.partial", 0
    with tarfile.open(src, "r") as source, tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as target:
        for member in source:
            if not member.isfile():
                target.addfile(member)
                continue
            data = source.extractfile(member).read()
            key, ext = split_name(member.name)
            if ext == "json" and key in updates:
                try:
                    meta = json.loads(data)
                except ValueError as exc:
                    raise ValueError(f"sample {key!r} in {src}: malformed json: {exc}") from exc
                data = json.dumps({**meta, **updates[key]}, ensure_ascii=False).encode("utf-8")
                member = tarfile.TarInfo(member.name)
                member.size, member.mtime, member.mode = len(data), 0, 0o644
                changed += 1
            target.addfile(member, io.BytesIO(data))
    os.replace(partial, dst)
    return changed


def media_of(key: str, entries: dict[str, bytes]) -> tuple[str, bytes]:
    """``(extension, bytes)`` of a sample's one media entry (KeyError naming the key if not one)."""
    return schema.media_entry({**entries, "__key__": key})


def meta_of(key: str, entries: dict[str, bytes]) -> dict:
    """A sample's json as a dict (empty when it has none; malformed json names the key)."""
    if "json" not in entries:
        return {}
    try:
        meta = json.loads(entries["json"])
    except ValueError as exc:
        raise ValueError(f"sample {key!r}: malformed json: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"sample {key!r}: json is a {type(meta).__name__}, not an object")
    return meta


def release(obj: Any) -> None:
    """Drop the models ``obj`` loaded (what its pickled state leaves out): after the stage's
    up-front check, work that runs in other processes loads its own copy there, and this
    process need not hold one more."""
    state = obj.__getstate__()
    if isinstance(state, dict):
        obj.__dict__.update(state)


def error_text(exc: Exception) -> str:
    """``"ExceptionType: first line"``: an error short enough for a manifest column."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def prepare_output(src: str | Path, dst: str | Path, overwrite: bool) -> Path:
    """Check that ``dst`` may receive a stage's output of ``src``, and create it."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ValueError(f"output folder {dst} is the input folder: stages write a new dataset folder")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {dst} is not empty (pass overwrite=True to replace its shards)")
    dst.mkdir(parents=True, exist_ok=True)
    return dst


def write_updated_folder(src: str | Path, dst: str | Path, updates: Mapping[str, Mapping[str, Any]], engine) -> int:
    """Write dataset folder ``dst``: ``src``'s shards with ``updates`` merged into the json of the
    samples they name, its manifest with the updates' scalar fields as columns, its rejects.

    Returns the number of samples whose json changed.
    """
    from lvdm.curation.engine import failed

    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    shards = list(dict.fromkeys(manifest["shard"]))
    keys_by_shard = {shard: set(group["key"]) for shard, group in manifest.groupby("shard", sort=False)}
    items = [(str(src / s), str(dst / s), {k: updates[k] for k in keys_by_shard[s] if k in updates}) for s in shards]
    results = engine.map(rewrite_shard, items, desc="writing shards")
    errors = [f"{Path(item[0]).name}: {r.error}" for item, r in zip(items, results) if failed(r)]
    if errors:
        raise RuntimeError(f"could not write {len(errors)} shard(s) of {dst}: {'; '.join(errors[:3])}")
    rows = [{**row, **{name: value for name, value in updates.get(row["key"], {}).items() if _scalar(value)}}
            for row in manifest.to_dict("records")]
    schema.write_manifest(rows, dst / schema.MANIFEST_NAME)
    if (src / schema.REJECTS_NAME).is_file():
        shutil.copyfile(src / schema.REJECTS_NAME, dst / schema.REJECTS_NAME)
    return sum(results)
