"""``lvdm data score``: run scorers over a dataset folder, writing their fields into each sample's
json and the manifest (media bytes are copied, never re-encoded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from lvdm.curation.engine import check_not_all_failed, failed, make_engine
from lvdm.curation.folder import (error_text, media_of, meta_of, prepare_output, read_samples, release, work_items,
                                  write_updated_folder)
from lvdm.curation.frames import Clip, load_clip_frames
from lvdm.data.schema import IMAGE_EXTENSIONS

__all__ = ["score_dataset", "build_scorers", "ScoreChunk"]


class ScoreChunk:
    """The per-worker function of the score stage: ``(shard, keys) -> [(key, fields, error)]``.

    Decodes, per sample, the union of the frames its scorers ask for (once), then runs each
    scorer over the chunk's clips together (a batch for model scorers). A sample that cannot be
    read or decoded, or on which a scorer raises, keeps the other scorers' fields and gets the
    reason in ``error``; a scorer failing on a batch is retried clip by clip so that only the
    culprit loses its fields.

    Args:
        scorers: the scorers to run.
        max_short_side: decoded frames are downscaled to this shorter side.
        threads: torch / OpenCV threads in a worker (``None`` leaves them alone).
    """

    def __init__(self, scorers: Sequence, max_short_side: int = 512, threads: Optional[int] = 1) -> None:
        self.scorers = list(scorers)
        self.max_short_side = max_short_side
        self.threads = threads
        self._threads_set = False

    def _indices(self, total: int) -> list[int]:
        return sorted({i for scorer in self.scorers for i in scorer.frame_indices(total)})

    def _meta_clip(self, key: str, entries: dict[str, bytes]) -> Clip:
        """The clip without frames: what metadata-only scorers (rules) need."""
        ext, _ = media_of(key, entries)
        meta, caption = meta_of(key, entries), entries.get("txt", b"").decode("utf-8", errors="replace")
        kind = "image" if ext in IMAGE_EXTENSIONS else "video"
        return Clip(key, kind, int(meta.get("frames") or 1), {}, meta, caption,
                    int(meta.get("width") or 0), int(meta.get("height") or 0))

    def _clip(self, clip: Clip, entries: dict[str, bytes]) -> Clip:
        ext, data = media_of(clip.key, entries)
        return load_clip_frames(data, ext, clip.key, self._indices, clip.meta, clip.caption,
                                max_short_side=self.max_short_side)

    def _set_threads(self) -> None:
        if self.threads is None or self._threads_set:
            return
        import cv2
        import torch

        cv2.setNumThreads(self.threads)
        torch.set_num_threads(self.threads)
        self._threads_set = True

    def __call__(self, item: tuple[str, list[str]]) -> list[tuple[str, dict, str]]:
        self._set_threads()
        for scorer in self.scorers:  # once per worker: a model that cannot load fails the chunk
            scorer.load()
        shard, keys = item
        entries = read_samples(shard, keys)
        fields: dict[str, dict] = {key: {} for key in keys}
        errors: dict[str, list[str]] = {key: [] for key in keys}
        clips: dict[str, Clip] = {}
        decoded: set[str] = set()
        needs_frames = {scorer.name: bool(scorer.frame_indices(1 << 20)) for scorer in self.scorers}
        for key in keys:
            if key not in entries:
                errors[key].append(f"read: sample not found in {Path(shard).name}")
                continue
            try:
                clips[key] = self._meta_clip(key, entries[key])
                if any(needs_frames.values()):
                    clips[key] = self._clip(clips[key], entries[key])
                    decoded.add(key)
            except Exception as exc:  # a bad sample is reported, not fatal
                errors[key].append(f"{'decode' if key in clips else 'read'}: {error_text(exc)}")
        for scorer in self.scorers:
            ready = [key for key in keys if key in (decoded if needs_frames[scorer.name] else clips)]
            try:
                results = dict(zip(ready, scorer.score_batch([clips[k] for k in ready])))
            except Exception:  # find the culprit(s): one clip at a time
                results = {}
                for key in ready:
                    try:
                        results[key] = scorer.score_batch([clips[key]])[0]
                    except Exception as exc:
                        errors[key].append(f"{scorer.name}: {error_text(exc)}")
            for key, values in results.items():
                fields[key].update(values)
        return [(key, fields[key], "; ".join(errors[key])) for key in keys]


def _check_scorers_ran(scorers: Sequence, rows: list[dict], problems: list[str]) -> None:
    """Fail the stage when every sample failed, or when one scorer wrote its fields on no sample."""
    for scorer in scorers:
        missed = [(problem or "no fields written") if not any(f in row for f in scorer.fields) else ""
                  for row, problem in zip(rows, problems)]
        check_not_all_failed(f"scorer {scorer.name!r}", missed)
    check_not_all_failed("scoring", problems)


def build_scorers(
    names: Sequence[str],
    clip: Optional[str] = None,
    aesthetic_head: Optional[str] = None,
    aesthetic_head_filename: Optional[str] = None,
    device: str = "cpu",
    options: Optional[dict[str, dict[str, Any]]] = None,
) -> list:
    """Scorer objects for ``names`` (see :data:`lvdm.curation.scorers.SCORERS`)."""
    from lvdm.curation.scorers import SCORERS

    options = dict(options or {})
    unknown = [n for n in list(names) + list(options) if n not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorer(s) {unknown}; choose from {sorted(SCORERS)}")
    if not names:
        raise ValueError(f"no scorers chosen; choose from {sorted(SCORERS)}")
    scorers = []
    for name in dict.fromkeys(names):
        kwargs = dict(options.get(name, {}))
        if name in ("aesthetic", "clip_match"):
            if not clip:
                raise ValueError(f"scorer {name!r} needs a CLIP model: give clip=<folder or hub id>")
            kwargs.setdefault("clip", clip)
            kwargs.setdefault("device", device)
        if name == "aesthetic":
            if not aesthetic_head:
                raise ValueError("scorer 'aesthetic' needs aesthetic_head=<.pth/.safetensors file or hub repo>")
            kwargs.setdefault("head", aesthetic_head)
            kwargs.setdefault("head_filename", aesthetic_head_filename)
        try:
            scorers.append(SCORERS[name](**kwargs))
        except TypeError as exc:
            raise ValueError(f"bad options for scorer {name!r}: {exc}") from exc
    return scorers


def score_dataset(
    source: str,
    out: str,
    scorers: list[str],
    clip: Optional[str] = None,
    aesthetic_head: Optional[str] = None,
    aesthetic_head_filename: Optional[str] = None,
    options: Optional[dict[str, dict[str, Any]]] = None,
    device: str = "cpu",
    engine: str = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    num_gpus: float = 0,
    chunk_size: int = 16,
    max_short_side: int = 512,
    overwrite: bool = False,
) -> dict:
    """Score every sample of a dataset folder and write a scored copy.

    Each scorer's fields (``motion``, ``ocr_area``, ``duplicate_of``, ``aesthetic``…) go into
    the sample's json and, when scalar, into the output manifest; ``score_error`` names what
    failed for a sample (empty when nothing did). Samples are never dropped here: filter them
    with ``lvdm data filter``. Media and captions are copied byte for byte. Model scorers load
    their models before any sample is read: a missing local path or an unreachable hub id fails
    at once, naming it. A run in which every sample failed, or one scorer failed on every
    sample, raises :class:`~lvdm.curation.engine.StageFailedError` (a non-zero exit) and writes
    nothing.

    Args:
        source: the dataset folder to score (shards, manifest.parquet, rejects.csv).
        out: the new dataset folder.
        scorers: scorer names: motion, ocr, duplicates, rules, aesthetic, clip_match.
        clip: CLIP folder or hub id, for aesthetic and clip_match.
        aesthetic_head: the aesthetic head's state dict file, or a hub repo id.
        aesthetic_head_filename: the head's file name within a hub repo.
        options: constructor arguments by scorer name, e.g.
            ``{"motion": {"pairs": 8}, "rules": {"min_short_side": 480}}``.
        device: where model scorers run (``cpu``, ``cuda``).
        engine: ``local`` (a process pool) or ``ray`` (Ray Data).
        workers: processes (local) or concurrent tasks (ray); local default 2.
        ray_address: ``None`` (a local Ray), ``auto`` or ``ray://host:10001``; ray only.
        num_gpus: GPUs per Ray task (model scorers on ``cuda``); ray only.
        chunk_size: samples per work item (and per model batch).
        max_short_side: decoded frames are downscaled to this shorter side.
        overwrite: replace the shards of a non-empty output folder.

    Returns:
        ``{"samples": n, "errors": samples with a score_error, "output": folder}``.
    """
    chosen = build_scorers(scorers, clip, aesthetic_head, aesthetic_head_filename, device, options)
    for scorer in chosen:  # before any sample: a missing model or file fails the run at once
        scorer.load()
    items = work_items(source, chunk_size)
    out_dir = prepare_output(source, out, overwrite)
    runner = make_engine(engine, workers=workers, ray_address=ray_address, num_gpus=num_gpus)
    in_process = engine == "local" and getattr(runner, "workers", 1) == 0
    if not in_process:  # the workers load their own models
        for scorer in chosen:
            release(scorer)
    chunk = ScoreChunk(chosen, max_short_side=max_short_side, threads=None if in_process else 1)
    results = runner.map(chunk, items, desc="scoring")
    keys, rows, problems = _collect(items, results)
    _check_scorers_ran(chosen, rows, problems)
    for scorer in chosen:
        rows = scorer.finalize(keys, rows)
    updates = {key: {**fields, "score_error": error} for key, fields, error in zip(keys, rows, problems)}
    write_updated_folder(source, out_dir, updates, runner)
    summary = {"samples": len(keys), "errors": sum(bool(p) for p in problems), "output": str(out_dir)}
    print(f"scored {summary['samples']} samples with {[s.name for s in chosen]} ({summary['errors']} with "
          f"errors, see score_error) -> {out}")
    return summary


def _collect(items: list, results: list) -> tuple[list[str], list[dict], list[str]]:
    """(keys, score fields, error) of every sample, in order; a chunk that failed as a whole
    (an unreadable shard, a dead worker) gives each of its samples that error."""
    keys, rows, problems = [], [], []
    for (_, chunk_keys), result in zip(items, results):
        if failed(result):
            result = [(key, {}, f"chunk: {result.error}") for key in chunk_keys]
        for key, fields, error in result:
            keys.append(key)
            rows.append(fields)
            problems.append(error)
    return keys, rows, problems
