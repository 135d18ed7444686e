"""``lvdm data ingest``: a user's raw videos and images → WebDataset shards, every input accounted for.

Three kinds of input (:func:`ingest` picks by looking, or ``source_format`` says):

- a **folder tree** of videos and images with sidecar captions: ``clip.mp4`` + ``clip.txt``
  (the caption) and/or ``clip.json`` (its ``caption`` or ``text`` field is the caption when
  there is no ``.txt``; its other fields are kept);
- an **Open-Sora style table** (``.csv``, ``.tsv``, ``.parquet``): a ``path`` column (relative
  paths resolve against the table's folder), a ``text`` caption column, any other columns kept;
- **video2dataset / img2dataset shards** (a folder of ``*.tar``, a glob, or one tar): their
  ``key.<media>``, ``key.txt`` and ``key.json`` (all of whose fields are kept).

Each input is probed from its container (:func:`lvdm.data.media_probe.probe_media`), validated and
written as a sample of :mod:`lvdm.data.schema`; the folder gets ``manifest.parquet`` and
``rejects.csv``, and ``accepted + rejected = inputs`` is printed. Inputs are dealt into
shards in a fixed order, ``shard_size`` per shard, and each shard is one task for the worker
pool; a shard records itself as finished in ``<out>/.ingest/`` only after its tar is complete,
so ``resume=True`` keeps finished shards and redoes the rest.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from lvdm.curation.engine import failed, make_engine, print_reasons
from lvdm.data.media_probe import ProbeError, probe_media
from lvdm.data.schema import (
    MANIFEST_NAME, MEDIA_EXTENSIONS, METADATA_FIELDS, REJECTS_NAME, SHARD_PATTERN, assign_keys, manifest_row,
    write_manifest, write_rejects,
)
from lvdm.data.shards import ShardWriter
from lvdm.curation.transcode import transcode_mp4

__all__ = ["ingest", "InputItem", "IngestOptions"]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
CAPTION_FIELDS = ("caption", "text")
STATE_DIR = ".ingest"
# Fields ingest itself writes; an input column of the same name is kept as ``input_<name>``.
RESERVED = set(METADATA_FIELDS) | {"key", "shard", "caption_source", "frames_listed", "source_codec"}


@dataclass
class InputItem:
    """One input before probing: where its bytes are, its caption, its own fields.

    Attributes:
        identity: what the sample key derives from (a relative path, a table path, a
            video2dataset key); unique among the inputs.
        source: how the input is named in the json's ``source`` and in ``rejects.csv``.
        ext: the input's own media extension (lower case).
        path: the file to read, or the tar holding the member when ``size`` is set.
        offset, size: byte range of a tar member (video2dataset shards).
        caption: the caption, ``None`` when missing or unreadable.
        caption_source: where the caption came from (``txt``, ``json``, ``table``, ``none``).
        caption_problem: why the caption is ``None``.
        fields: the input's own columns or json fields, kept in the sample json.
    """

    identity: str
    source: str
    ext: str
    path: str
    offset: int = 0
    size: Optional[int] = None
    caption: Optional[str] = None
    caption_source: str = "none"
    caption_problem: str = ""
    fields: dict = field(default_factory=dict)

    def read(self) -> bytes:
        if self.size is None:
            return Path(self.path).read_bytes()
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise OSError(f"tar member cut short: {len(data)} of {self.size} bytes")
        return data


@dataclass(frozen=True)
class IngestOptions:
    """What a worker needs to turn inputs into samples (see :func:`ingest` for each)."""

    missing_caption: str = "reject"
    min_frames: int = 1
    min_duration: float = 0.0
    max_frames: int = 100_000
    max_pixels: int = 4096 * 4096
    images: bool = True
    reencode: bool = False
    max_size: Optional[int] = None
    crf: int = 18


@dataclass
class _ShardTask:
    index: int
    out: str
    items: list  # [(key, InputItem)]
    options: IngestOptions


# ---------------------------------------------------------------- enumerating inputs

def _plain(value: Any) -> Any:
    """A json-able Python value from a pandas/numpy cell; ``None`` for missing ones."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            value = value.tolist() if hasattr(value, "tolist") else str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return str(value)


def _kept(fields: dict) -> dict:
    """Input fields for the sample json: ``None`` dropped, reserved names prefixed ``input_``."""
    return {(f"input_{k}" if k in RESERVED else k): v for k, v in fields.items() if v is not None}


def _media_ext(name: str) -> Optional[str]:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext in MEDIA_EXTENSIONS else None


def _caption_from_json(fields: dict) -> Optional[str]:
    for name in CAPTION_FIELDS:
        value = fields.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _folder_inputs(root: Path) -> tuple[list[InputItem], list[tuple[str, str]], Counter]:
    """Media files under ``root`` (sorted walk) with their sidecar captions."""
    items, rejects, other = [], [], Counter()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        names = set(files)
        for name in sorted(files):
            ext = _media_ext(name)
            if ext is None:
                stem, dot, suffix = name.rpartition(".")
                is_sidecar = suffix in ("txt", "json") and any(f"{stem}.{e}" in names or f"{stem}.{e.upper()}" in names
                                                               for e in MEDIA_EXTENSIONS)
                if not is_sidecar:
                    other[f".{suffix.lower()}" if dot else "(no extension)"] += 1
                continue
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            item = InputItem(identity=rel, source=str(path), ext=ext, path=str(path))
            _attach_sidecars(item, path.with_suffix(""))
            items.append(item)
    return items, rejects, other


def _attach_sidecars(item: InputItem, stem: Path) -> None:
    txt, sidecar = Path(f"{stem}.txt"), Path(f"{stem}.json")
    problems = []
    if sidecar.is_file():
        try:
            fields = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(fields, dict):
                raise ValueError(f"holds a {type(fields).__name__}, not an object")
            item.fields = fields
            caption = _caption_from_json(fields)
            if caption is not None:
                item.caption, item.caption_source = caption, "json"
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"caption file {sidecar.name} is not a json object ({exc})")
    if txt.is_file():
        try:
            text = txt.read_text(encoding="utf-8").strip()
            if text:
                item.caption, item.caption_source = text, "txt"
            else:
                problems.append(f"caption file {txt.name} is empty")
        except UnicodeDecodeError:
            problems.append(f"caption file {txt.name} is not UTF-8 text")
    if item.caption is None:
        item.caption_problem = "; ".join(problems) or f"no caption ({txt.name} or {sidecar.name})"


def _read_table(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=True)


def _table_inputs(table: Path, path_column: str, caption_column: str):
    frame = _read_table(table)
    if path_column not in frame.columns:
        raise ValueError(f"table {table} has no {path_column!r} column (columns: {list(frame.columns)}); "
                         f"name the column with --path_column")
    base = table.parent
    items, rejects, seen = [], [], {}
    for row_number, row in enumerate(frame.to_dict("records"), start=2 if table.suffix.lower() != ".parquet" else 0):
        where = f"{table.name} {'line' if table.suffix.lower() != '.parquet' else 'row'} {row_number}"
        raw = _plain(row.pop(path_column))
        if not isinstance(raw, str) or not raw.strip():
            rejects.append((f"{where}", f"empty {path_column!r} in {where}"))
            continue
        path = Path(os.path.expanduser(raw.strip()))
        path = path if path.is_absolute() else base / path
        resolved = os.path.normpath(os.path.abspath(path))
        if resolved in seen:
            rejects.append((raw, f"duplicate path: {where} repeats {seen[resolved]}"))
            continue
        seen[resolved] = where
        if not os.path.isfile(resolved):
            rejects.append((raw, f"missing file: {resolved} (named in {where})"))
            continue
        ext = _media_ext(resolved)
        if ext is None:
            rejects.append((raw, f"not a supported media extension ({', '.join(MEDIA_EXTENSIONS)})"))
            continue
        try:
            identity = Path(resolved).relative_to(os.path.abspath(base)).as_posix()
        except ValueError:
            identity = resolved
        caption = _plain(row.pop(caption_column, None))
        item = InputItem(identity=identity, source=raw, ext=ext, path=resolved,
                         fields={k: _plain(v) for k, v in row.items()})
        if isinstance(caption, str) and caption.strip():
            item.caption, item.caption_source = caption.strip(), "table"
        else:
            item.caption_problem = f"no caption in column {caption_column!r} of {where}"
        items.append(item)
    return items, rejects, Counter()


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's split of a tar entry name: key up to the basename's first dot, then the rest."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def _shard_inputs(tars: list[str]):
    """Samples of video2dataset/img2dataset tar shards, read by byte range (no extraction)."""
    items, rejects, seen = [], [], {}
    for tar_path in tars:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(tar_path) as tar:
                for member in tar:
                    if member.isfile():
                        key, suffix = _split_member(member.name)
                        groups.setdefault(key, {})[suffix] = member
                texts = {(key, s): tar.extractfile(m).read() for key, g in groups.items()
                         for s, m in g.items() if s in ("txt", "json")}
        except (tarfile.TarError, OSError) as exc:
            rejects.append((tar_path, f"unreadable tar shard: {exc}"))
            continue
        for key, group in groups.items():
            source = f"{tar_path}#{key}"
            media = [s for s in group if s in MEDIA_EXTENSIONS]
            if len(media) != 1:
                rejects.append((source, f"{'no' if not media else len(media)} media entries in the shard "
                                        f"(entries: {sorted(group)})"))
                continue
            if key in seen:
                rejects.append((source, f"duplicate key: already in {seen[key]}"))
                continue
            seen[key] = tar_path
            member = group[media[0]]
            item = InputItem(identity=key, source=source, ext=media[0], path=tar_path,
                             offset=member.offset_data, size=member.size)
            if (key, "json") in texts:
                try:
                    fields = json.loads(texts[key, "json"].decode("utf-8"))
                    if not isinstance(fields, dict):
                        raise ValueError(f"holds a {type(fields).__name__}, not an object")
                except (ValueError, UnicodeDecodeError) as exc:
                    rejects.append((source, f"malformed json {key}.json: {exc}"))
                    continue
                item.fields = fields
            if (key, "txt") in texts:
                try:
                    text = texts[key, "txt"].decode("utf-8").strip()
                    if text:
                        item.caption, item.caption_source = text, "txt"
                except UnicodeDecodeError:
                    item.caption_problem = f"caption {key}.txt is not UTF-8 text"
            if item.caption is None and _caption_from_json(item.fields):
                item.caption, item.caption_source = _caption_from_json(item.fields), "json"
            if item.caption is None and not item.caption_problem:
                item.caption_problem = f"no caption ({key}.txt or a caption field in {key}.json)"
            items.append(item)
    return items, rejects, Counter()


def _resolve_tars(source: str) -> list[str]:
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.tar"))
    if glob.has_magic(source):
        return sorted(glob.glob(os.path.expanduser(source)))
    return [str(path)]


def _detect(source: str) -> str:
    path = Path(os.path.expanduser(source))
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return "table"
    if path.is_file() and path.suffix.lower() == ".tar" or glob.has_magic(source):
        return "shards"
    if path.is_dir():
        top = [p for p in path.iterdir() if p.is_file()]
        if any(p.suffix == ".tar" for p in top) and not any(_media_ext(p.name) for p in top):
            return "shards"
        return "folder"
    raise FileNotFoundError(f"ingest source {source} does not exist")


def enumerate_inputs(source: str, source_format: str = "auto", path_column: str = "path",
                     caption_column: str = "text"):
    """``(items, rejects, ignored)``: the inputs of ``source`` in a fixed order, the inputs
    refused before probing (missing files, duplicates, malformed json), and a count of the
    non-media files a folder holds, by extension."""
    kind = _detect(source) if source_format == "auto" else source_format
    if kind == "folder":
        return _folder_inputs(Path(os.path.expanduser(source)))
    if kind == "table":
        return _table_inputs(Path(os.path.expanduser(source)), path_column, caption_column)
    if kind == "shards":
        tars = _resolve_tars(source)
        if not tars:
            raise FileNotFoundError(f"no *.tar shards in {source}")
        return _shard_inputs(tars)
    raise ValueError(f"unknown source_format {source_format!r}: choose auto, folder, table or shards")


# ---------------------------------------------------------------- one shard per task

def _sample(key: str, item: InputItem, options: IngestOptions) -> dict:
    """Probe, validate and (optionally) re-encode one input; raises with the reject reason."""
    caption = item.caption
    if caption is None:
        if options.missing_caption == "reject":
            raise ProbeError(item.caption_problem)
        caption = ""
    data = item.read()
    info = probe_media(data, item.ext, max_frames=options.max_frames, max_pixels=options.max_pixels)
    if info.kind == "image" and not options.images:
        raise ProbeError("an image, and images=False")
    if info.kind == "video" and info.frames < options.min_frames:
        raise ProbeError(f"too short: {info.frames} frames, fewer than min_frames={options.min_frames}")
    if info.kind == "video" and info.duration < options.min_duration:
        raise ProbeError(f"too short: {info.duration:.3f} s, less than min_duration={options.min_duration}")
    meta = {"source": item.source, **info.metadata()}
    ext = info.ext
    if options.reencode and info.kind == "video":
        clip = transcode_mp4(data, max_size=options.max_size, crf=options.crf)
        data, ext = clip.data, "mp4"
        meta.update(codec="h264", fps=round(clip.fps, 6), frames=clip.frames, width=clip.width, height=clip.height,
                    duration=round(clip.frames / clip.fps, 6), aspect=round(clip.width / clip.height, 6),
                    source_codec=info.codec)
    if info.frames_listed and info.frames_listed != info.frames:
        meta["frames_listed"] = info.frames_listed
    meta["caption_source"] = item.caption_source if item.caption is not None else "none"
    meta.update(_kept(item.fields))
    return {"key": key, ext: data, "txt": caption, "json": meta}


def _reason(exc: Exception) -> str:
    if isinstance(exc, ProbeError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _ingest_shard(task: _ShardTask) -> dict:
    """Write shard ``task.index`` from its inputs; returns its manifest rows and rejects."""
    out = Path(task.out)
    rows, rejects = [], []
    with ShardWriter(str(out / SHARD_PATTERN), max_count=max(1, len(task.items)), start_index=task.index) as sink:
        for key, item in task.items:
            try:
                sample = _sample(key, item, task.options)
            except Exception as exc:  # any failure of one input is that input's reject reason
                rejects.append((item.source, _reason(exc)))
                continue
            shard = sink.write(sample)
            rows.append(manifest_row(key, shard, sample["json"]))
    part = {"rows": rows, "rejects": rejects}
    state = out / STATE_DIR / f"{Path(SHARD_PATTERN % task.index).stem}.json"
    temporary = state.with_suffix(".json.partial")
    temporary.write_text(json.dumps(part))
    os.replace(temporary, state)  # the shard counts as finished only now
    return part


# ---------------------------------------------------------------- the command

def _plan_digest(keyed: list[tuple[str, InputItem]], shard_size: int, options: IngestOptions) -> str:
    digest = hashlib.sha1(f"{shard_size}|{options!r}".encode())
    for key, item in keyed:
        digest.update(f"\n{key}|{item.source}|{item.size}".encode())
    return digest.hexdigest()


def _prepare_out(out: Path, digest: str, resume: bool) -> None:
    state = out / STATE_DIR
    plan = state / "plan.json"
    existing = plan.is_file() or (out / MANIFEST_NAME).is_file() or any(out.glob("shard-*.tar"))
    if existing and not resume:
        raise FileExistsError(f"{out} already holds an ingest; pass --resume true to finish it, "
                              f"or choose an empty out folder")
    if resume and plan.is_file() and json.loads(plan.read_text())["digest"] != digest:
        raise ValueError(f"cannot resume {out}: the inputs or options differ from the run that wrote it")
    state.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"digest": digest}))
    for stale in out.glob("*.partial"):
        stale.unlink()


def ingest(
    source: str,
    out: str,
    source_format: Literal["auto", "folder", "table", "shards"] = "auto",
    shard_size: int = 1000,
    engine: Literal["local", "ray"] = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    resume: bool = False,
    missing_caption: Literal["reject", "empty"] = "reject",
    min_frames: int = 1,
    min_duration: float = 0.0,
    max_frames: int = 100_000,
    max_pixels: int = 4096 * 4096,
    images: bool = True,
    reencode: bool = False,
    max_size: Optional[int] = None,
    crf: int = 18,
    path_column: str = "path",
    caption_column: str = "text",
) -> dict:
    """Turn raw videos and images into WebDataset shards with a manifest and a rejects report.

    Writes ``<out>/shard-000000.tar ...`` (each sample: its media under its real extension,
    ``.txt`` caption, ``.json`` with source, kind, codec, fps, frames, width, height, duration,
    aspect, caption_source and the input's own fields — one whose name clashes with these is
    kept as ``input_<name>``), ``<out>/manifest.parquet`` and ``<out>/rejects.csv``.

    Args:
        source: a folder of media with sidecar ``.txt``/``.json`` captions; a table
            (``.csv``, ``.tsv``, ``.parquet``); or video2dataset/img2dataset shards (a folder of
            ``*.tar``, a glob, or a ``.tar``).
        out: output folder.
        source_format: ``auto`` (decide from ``source``), ``folder``, ``table`` or ``shards``.
        shard_size: inputs per shard (a shard holds fewer samples when some are rejected).
        engine: ``local`` (a process pool) or ``ray`` (Ray Data; workers then write the shards
            into ``out`` themselves, so on a cluster ``out`` must be a shared filesystem).
        workers: processes (local; ``0`` runs in this process; default 2) or Ray actors
            (default one per CPU) probing and writing shards, one shard per task.
        ray_address: with ``engine=ray``: ``None`` starts a local Ray, ``auto`` joins this
            machine's cluster, ``ray://host:10001`` connects to a remote one.
        resume: finish an interrupted ingest into ``out``: shards already finished are kept,
            the others are redone. Refused if the inputs or options changed.
        missing_caption: ``reject`` an input whose caption is missing, empty or unreadable,
            or write it with an ``empty`` caption (to caption later).
        min_frames: reject videos with fewer frames.
        min_duration: reject videos shorter than this many seconds.
        max_frames: reject videos with more frames (bounds decoding).
        max_pixels: reject media with larger frames (bounds decoding).
        images: accept images (1-frame samples); ``False`` rejects them.
        reencode: re-encode videos as H.264 mp4 (yuv420p) instead of keeping their bytes.
        max_size: with ``reencode``, cap the longer side at this many pixels.
        crf: with ``reencode``, the x264 quality (lower is better).
        path_column: the table column holding media paths.
        caption_column: the table column holding captions.

    Returns:
        Summary: ``out``, ``inputs``, ``accepted``, ``rejected``, ``shards``, ``reasons``
        (reject reason → count, reasons cut before their details).
    """
    if missing_caption not in ("reject", "empty"):
        raise ValueError(f"missing_caption must be 'reject' or 'empty', got {missing_caption!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    options = IngestOptions(missing_caption, min_frames, min_duration, max_frames, max_pixels, images,
                            reencode, max_size, crf)
    items, early_rejects, ignored = enumerate_inputs(source, source_format, path_column, caption_column)
    keyed = list(zip(assign_keys([item.identity for item in items]), items))
    root = Path(out)
    _prepare_out(root, _plan_digest(keyed, shard_size, options), resume)
    tasks = [_ShardTask(i, str(root), keyed[start:start + shard_size], options)
             for i, start in enumerate(range(0, len(keyed), shard_size))]
    done, run_now = _run_shards(tasks, root, resume, make_engine(engine, workers, ray_address))
    summary = _write_reports(root, done, early_rejects, len(items) + len(early_rejects))
    _print_summary(summary, run_now, len(tasks) - run_now, ignored)
    return summary


def _write_reports(root: Path, done: dict[int, dict], early_rejects: list, inputs: int) -> dict:
    """Write the manifest and the rejects report of all shards; the run's summary."""
    rows = [row for i in sorted(done) for row in done[i]["rows"]]
    rejects = list(early_rejects) + [tuple(r) for i in sorted(done) for r in done[i]["rejects"]]
    write_manifest(rows, root / MANIFEST_NAME)
    write_rejects(rejects, root / REJECTS_NAME)
    reasons = Counter(reason.split(":")[0].split(" (")[0] for _, reason in rejects)
    return {"out": str(root), "inputs": inputs, "accepted": len(rows), "rejected": len(rejects),
            "shards": [str(root / s) for s in sorted({row["shard"] for row in rows})],
            "reasons": dict(reasons)}


def _run_shards(tasks: list[_ShardTask], root: Path, resume: bool, runner) -> tuple[dict[int, dict], int]:
    """Each shard's ``{"rows", "rejects"}`` by shard index: read back for shards a resumed run
    finished before, written now for the others (a shard whose worker died rejects each of its
    inputs with why); and how many shard tasks ran now."""
    done = {}
    for task in tasks:
        state = root / STATE_DIR / f"{Path(SHARD_PATTERN % task.index).stem}.json"
        if resume and state.is_file():
            done[task.index] = json.loads(state.read_text())
    todo = [task for task in tasks if task.index not in done]
    for task, part in zip(todo, runner.map(_ingest_shard, todo, desc="ingest shards")):
        if failed(part):
            part = {"rows": [], "rejects": [(item.source, f"worker failed: {part.error}") for _, item in task.items]}
        done[task.index] = part
    return done, len(todo)


def _print_summary(summary: dict, run_now: int, before: int, ignored: Counter) -> None:
    inputs = summary["inputs"]
    print(f"ingested {inputs} inputs into {summary['out']}/: {summary['accepted']} accepted + {summary['rejected']} "
          f"rejected = {inputs} in {len(summary['shards'])} shards ({run_now} shard tasks run now, {before} "
          "finished before)")
    print_reasons(Counter(summary["reasons"]))
    if ignored:
        print("  not media, ignored: " + ", ".join(f"{n} {ext}" for ext, n in ignored.most_common()))
