"""The one sample and dataset format every ``lvdm data`` stage reads and writes.

A **dataset folder** holds WebDataset shards ``shard-000000.tar, shard-000001.tar, ...``,
``manifest.parquet`` (one row per sample: ``key``, ``shard`` — the tar file name — and the
sample json's top-level scalar fields) and ``rejects.csv`` (``path,reason``, one row per
input that did not become a sample).

A **sample** is three tar entries sharing one key: ``key.<ext>`` — the media bytes under
their real extension (videos: :data:`VIDEO_EXTENSIONS`, images: :data:`IMAGE_EXTENSIONS`) —
``key.txt`` (the caption) and ``key.json`` (metadata: :data:`METADATA_FIELDS` plus the
input's own columns or fields).

**Keys** contain no dots and no slashes: webdataset splits a tar entry name at the first dot
of its base name, so ``clip.v2.mp4`` would be read back as key ``clip`` with an entry
``v2.mp4`` (and the sample then has no ``mp4``), and two samples with one key are merged into
one when adjacent. :func:`assign_keys` derives safe, unique keys from paths; :func:`check_key`
refuses anything else.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "MEDIA_EXTENSIONS", "METADATA_FIELDS",
    "SHARD_PATTERN", "MANIFEST_NAME", "REJECTS_NAME", "InvalidSampleError", "BadMetadataError", "sample_json",
    "check_key", "key_from_path", "assign_keys", "sniff_media", "canonical_extension", "check_media",
    "media_kind", "media_entry", "manifest_row", "write_manifest", "read_manifest",
    "write_rejects", "read_rejects",
]

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "gif")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
METADATA_FIELDS = ("source", "kind", "codec", "fps", "frames", "width", "height", "duration", "aspect")

SHARD_PATTERN = "shard-%06d.tar"
MANIFEST_NAME = "manifest.parquet"
REJECTS_NAME = "rejects.csv"

# Container families by their leading bytes; one file extension may only hold its own family.
_FAMILY = {"mp4": "isobmff", "mov": "isobmff", "webm": "matroska", "mkv": "matroska", "avi": "avi",
           "gif": "gif", "jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}
_CANONICAL = {"isobmff": "mp4", "matroska": "mkv", "avi": "avi", "gif": "gif", "jpeg": "jpg",
              "png": "png", "webp": "webp"}
# Top-level ISO-BMFF boxes a mp4/mov file may start with (QuickTime files need not begin with ftyp).
_ISOBMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_KEY = 100


class InvalidSampleError(ValueError):
    """A sample that must not be written (unsafe or duplicate key, empty or non-media bytes)."""


class BadMetadataError(ValueError):
    """A sample's ``key.json`` is not a JSON object (unreadable, not UTF-8, or a list/number/string)."""


def sample_json(sample: Mapping) -> dict:
    """The metadata object of a raw WebDataset sample's ``key.json`` (``{}`` when it has none).

    Raises:
        BadMetadataError: naming the sample's key, when the json is unreadable or valid JSON that
            is not an object (readers skip such a sample and count it as ``bad_json``).
    """
    if "json" not in sample:
        return {}
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["json"])
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadMetadataError(f"key.json of sample {key!r} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BadMetadataError(f"key.json of sample {key!r} is a JSON {type(meta).__name__}, not an object")
    return meta


def check_key(key: object) -> str:
    """Return ``key`` if webdataset reads it back unchanged; raise :class:`InvalidSampleError` if not.

    A key must be a non-empty string without dots, slashes, backslashes or control characters.
    """
    if not isinstance(key, str) or not key:
        raise InvalidSampleError(f"sample key {key!r} must be a non-empty string")
    bad = [c for c in (".", "/", "\\") if c in key] + (["control characters"] if any(ord(c) < 32 for c in key) else [])
    if bad:
        raise InvalidSampleError(
            f"sample key {key!r} contains {' and '.join(repr(b) for b in bad)}: webdataset splits a tar entry "
            f"name at its first dot and at slashes, so this sample would be lost or renamed at read time; "
            f"derive keys with lvdm.data.schema.assign_keys")
    return key


def key_from_path(path: str) -> str:
    """A safe key for a (relative) path: the extension dropped, folders joined by ``__``, every
    character other than ``A-Z a-z 0-9 _ -`` replaced by ``_``. Not unique by itself: see
    :func:`assign_keys`."""
    parts = [p for p in re.split(r"[/\\]+", str(path)) if p not in ("", ".")]
    if parts:
        stem, dot, ext = parts[-1].rpartition(".")
        parts[-1] = stem if dot and stem else parts[-1]
    key = "__".join(_KEY_UNSAFE.sub("_", p) for p in parts)
    return key or "_"


def _digest(text: str, length: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def assign_keys(identities: Sequence[str]) -> list[str]:
    """Unique safe keys for distinct input identities (relative paths, or ``shard:key`` names).

    A path's key is :func:`key_from_path`; keys longer than 100 characters are cut and given a
    hash suffix. Paths whose keys collide (``a b.mp4`` and ``a_b.mp4``, or ``x.mp4`` and
    ``x.webm``) all get ``-`` plus the first 8 hex digits of the SHA-1 of their full identity,
    so a key depends only on the identity and on which others collide with it — never on the
    input order — and re-running an ingest gives the same keys.

    Raises:
        ValueError: an identity is given twice (callers reject duplicate inputs first).
    """
    twice = [name for name, n in Counter(identities).items() if n > 1]
    if twice:
        raise ValueError(f"assign_keys needs distinct identities; given more than once: {twice[:5]}")
    bases = []
    for identity in identities:
        base = key_from_path(identity)
        if len(base) > _MAX_KEY:
            base = f"{base[:_MAX_KEY - 9]}-{_digest(identity, 8)}"
        bases.append(base)
    counts = Counter(bases)
    keys = [f"{b}-{_digest(i, 8)}" if counts[b] > 1 else b for b, i in zip(bases, identities)]
    if len(set(keys)) < len(keys):  # a suffixed key met a plain one: use the long hash for all collisions
        counts = Counter(keys)
        keys = [f"{key_from_path(i)[:_MAX_KEY - 41]}-{_digest(i, 40)}" if counts[k] > 1 else k
                for k, i in zip(keys, identities)]
    return keys


def sniff_media(data: bytes) -> str | None:
    """The container family of media bytes from their signature (``isobmff`` for mp4/mov,
    ``matroska`` for mkv/webm, ``avi``, ``gif``, ``jpeg``, ``png``, ``webp``), or ``None``."""
    head = bytes(data[:16])
    if head[4:8] in _ISOBMFF_BOXES:
        return "isobmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def canonical_extension(data: bytes, preferred: str | None = None) -> str | None:
    """The extension media bytes are stored under: ``preferred`` (e.g. the input's own
    extension) when it names the bytes' family, else the family's usual one; ``None`` when the
    bytes are not a known media file."""
    family = sniff_media(data)
    if family is None:
        return None
    preferred = (preferred or "").lower().lstrip(".")
    return preferred if _FAMILY.get(preferred) == family else _CANONICAL[family]


def check_media(ext: str, data: bytes, key: str = "?") -> None:
    """Raise :class:`InvalidSampleError` (naming ``key``) unless ``data`` is non-empty media of
    the family that extension ``ext`` names. This reads the signature only: a corrupt body
    passes (readers skip and count those)."""
    if ext not in _FAMILY:
        raise InvalidSampleError(f"sample {key!r}: {ext!r} is not a media extension ({', '.join(MEDIA_EXTENSIONS)})")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidSampleError(f"sample {key!r}: .{ext} must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidSampleError(f"sample {key!r}: .{ext} is empty (0 bytes)")
    family = sniff_media(data)
    if family is None:
        raise InvalidSampleError(f"sample {key!r}: .{ext} is not a media file (starts with {bytes(data[:8])!r})")
    if family != _FAMILY[ext]:
        raise InvalidSampleError(f"sample {key!r}: .{ext} holds a {family} file; store it as "
                                 f".{_CANONICAL[family]} (see lvdm.data.schema.canonical_extension)")


def media_kind(ext: str) -> str:
    """``"video"`` or ``"image"`` for a media extension."""
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    raise ValueError(f"{ext!r} is not a media extension ({', '.join(MEDIA_EXTENSIONS)})")


def media_entry(sample: Mapping) -> tuple[str, bytes]:
    """``(extension, bytes)`` of the one media entry of a raw WebDataset sample.

    Raises:
        KeyError: naming the sample's key and the entries it has, when it has no media entry
            or more than one.
    """
    found = [ext for ext in MEDIA_EXTENSIONS if ext in sample]
    if len(found) != 1:
        entries = sorted(k for k in sample if not k.startswith("__"))
        what = "no media entry" if not found else f"{len(found)} media entries"
        raise KeyError(f"sample {sample.get('__key__', '?')!r} has {what} (entries: {entries}; "
                       f"expected one of {', '.join(MEDIA_EXTENSIONS)})")
    return found[0], sample[found[0]]


def _scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def manifest_row(key: str, shard: str, meta: Mapping) -> dict:
    """One manifest row: ``key``, ``shard`` (the tar file name) and the json's top-level scalar
    fields (lists and objects stay in the json only)."""
    row = {name: value for name, value in meta.items() if _scalar(value) and name not in ("key", "shard")}
    return {"key": key, "shard": Path(shard).name, **row}


def write_manifest(rows: Iterable[Mapping], path: str | Path) -> Path:
    """Write manifest rows (see :func:`manifest_row`) to a parquet file; ``key`` and ``shard``
    lead, other columns follow in first-seen order; a field missing from a row is null."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    if frame.empty:
        frame = pd.DataFrame({"key": pd.Series(dtype=str), "shard": pd.Series(dtype=str)})
    for column in frame.columns:  # a column of mixed types (1, "a") cannot be stored: keep it as text
        kinds = {type(v) for v in frame[column] if not (v is None or (isinstance(v, float) and math.isnan(v)))}
        if len(kinds - {int, float}) and len(kinds) > 1:
            frame[column] = [None if v is None else json.dumps(v) if not isinstance(v, str) else v
                             for v in frame[column]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def read_manifest(path: str | Path):
    """The manifest of a dataset folder (or a ``manifest.parquet`` path) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    return pd.read_parquet(path)


def write_rejects(rows: Iterable[tuple[str, str]], path: str | Path) -> Path:
    """Write ``(path, reason)`` rows as ``rejects.csv`` with a ``path,reason`` header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(rows)
    return path


def read_rejects(path: str | Path) -> list[tuple[str, str]]:
    """``(path, reason)`` rows of a dataset folder's ``rejects.csv`` (or of that file)."""
    path = Path(path)
    if path.is_dir():
        path = path / REJECTS_NAME
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["path"], row["reason"]) for row in csv.DictReader(handle)]
