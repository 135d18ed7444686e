"""``lvdm data caption``: captions from a vision-language model into each sample's json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lvdm.curation.captioners import DEFAULT_PROMPT, OpenAICaptioner, TransformersCaptioner, redact
from lvdm.curation.engine import check_not_all_failed, failed, make_engine
from lvdm.curation.folder import (error_text, media_of, meta_of, prepare_output, read_samples, release, work_items,
                                  write_updated_folder)
from lvdm.curation.frames import load_clip_frames

__all__ = ["caption_dataset", "CaptionChunk"]


class CaptionChunk:
    """The per-worker function of the caption stage: ``(shard, keys) -> [(key, caption, error)]``.

    Args:
        captioner: a :class:`TransformersCaptioner` or :class:`OpenAICaptioner`.
        max_short_side: frames are downscaled to this shorter side before the model sees them.
    """

    def __init__(self, captioner, max_short_side: int = 512) -> None:
        self.captioner = captioner
        self.max_short_side = max_short_side

    def __call__(self, item: tuple[str, list[str]]) -> list[tuple[str, Optional[str], str]]:
        self.captioner.load()  # once per worker: a model that cannot load fails the chunk
        shard, keys = item
        entries = read_samples(shard, keys)
        clips, errors = {}, {}
        for key in keys:
            if key not in entries:
                errors[key] = f"read: sample not found in {Path(shard).name}"
                continue
            try:
                ext, data = media_of(key, entries[key])
                caption = entries[key].get("txt", b"").decode("utf-8", errors="replace")
                clips[key] = load_clip_frames(data, ext, key, self.captioner.frame_indices, meta_of(key, entries[key]),
                                              caption, max_short_side=self.max_short_side)
            except Exception as exc:
                errors[key] = f"decode: {error_text(exc)}"
        ready = [key for key in keys if key in clips]
        try:
            captions = self.captioner.caption_batch([clips[k] for k in ready])
        except Exception:  # a batch that fails (out of memory, one odd clip): one clip at a time
            captions = []
            for key in ready:
                try:
                    captions += self.captioner.caption_batch([clips[key]])
                except Exception as exc:
                    captions.append(exc)
        out = {key: (None, errors[key]) for key in errors}
        for key, caption in zip(ready, captions):
            out[key] = (None, f"caption: {error_text(caption)}") if isinstance(caption, Exception) else (caption, "")
        return [(key, *out[key]) for key in keys]


def caption_dataset(
    source: str,
    out: str,
    model: str,
    backend: str = "transformers",
    base_url: Optional[str] = None,
    api_key_env: str = "OPENAI_API_KEY",
    field: str = "caption_vlm",
    prompt: str = DEFAULT_PROMPT,
    num_frames: int = 3,
    max_new_tokens: int = 200,
    batch_size: int = 4,
    concurrency: int = 4,
    retries: int = 3,
    timeout: float = 60.0,
    device: str = "cpu",
    dtype: str = "float32",
    engine: str = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    num_gpus: float = 0,
    max_short_side: int = 512,
    overwrite: bool = False,
) -> dict:
    """Caption every sample of a dataset folder with a vision-language model.

    The new caption goes into the json field ``field`` (and the manifest); ``txt`` — the
    original caption — and the media are copied unchanged. Train on the new captions with the
    readers' ``caption_field`` option. A sample that fails gets ``<field>_error`` (its caption
    is null) and stays in the dataset. The model loads before any sample is read (a missing
    path or unreachable hub id fails at once, naming it); a run in which every sample failed
    raises :class:`~lvdm.curation.engine.StageFailedError` (a non-zero exit) and writes nothing.

    Args:
        source: the dataset folder to caption.
        out: the new dataset folder.
        model: ``transformers``: a model folder or hub id; ``openai``: the model name served.
        backend: ``transformers`` (an image-text-to-text model, LLaVA-style) or ``openai`` (an
            OpenAI-compatible HTTP endpoint).
        base_url: the endpoint root for ``openai``, e.g. ``http://127.0.0.1:8000/v1``
            (``http://user:password@host/v1`` for basic auth; credentials are never written).
        api_key_env: environment variable with the endpoint's API key (``openai``).
        field: json field the caption is written to.
        prompt: the instruction; ``{frames}`` and ``{caption}`` (the current caption) are filled in.
        num_frames: frames per clip shown to the model.
        max_new_tokens: longest caption, in tokens.
        batch_size: clips per ``generate`` (``transformers``).
        concurrency: requests in flight per worker (``openai``).
        retries: extra tries of a failed request (``openai``).
        timeout: seconds one request may take, start to end (``openai``).
        device: ``cpu`` or ``cuda`` (``transformers``).
        dtype: model dtype (``transformers``): float32, bfloat16, float16.
        engine: ``local`` (a process pool) or ``ray`` (Ray Data).
        workers: processes (local; default 2; each loads the model) or concurrent Ray tasks.
        ray_address: ``None`` (a local Ray), ``auto`` or ``ray://host:10001``; ray only.
        num_gpus: GPUs per Ray task; ray only.
        max_short_side: frames are downscaled to this shorter side first.
        overwrite: replace the shards of a non-empty output folder.

    Returns:
        ``{"samples": n, "captioned": n_ok, "errors": n_failed, "output": folder}``.
    """
    captioner = _captioner(backend, model, base_url, api_key_env, prompt, num_frames, max_new_tokens, batch_size,
                           concurrency, retries, timeout, device, dtype)
    captioner.load()  # before any sample: a missing model fails the run at once, naming it
    items = work_items(source, batch_size if backend == "transformers" else max(batch_size, concurrency))
    out_dir = prepare_output(source, out, overwrite)
    runner = make_engine(engine, workers=workers, ray_address=ray_address, num_gpus=num_gpus)
    if not (engine == "local" and getattr(runner, "workers", 1) == 0):  # the workers load their own model
        release(captioner)
    results = runner.map(CaptionChunk(captioner, max_short_side), items, desc="captioning")
    updates = _updates(items, results, field, getattr(captioner, "redact", redact))
    check_not_all_failed("captioning", [u[f"{field}_error"] for u in updates.values()])
    write_updated_folder(source, out_dir, updates, runner)
    errors = sum(bool(u[f"{field}_error"]) for u in updates.values())
    summary = {"samples": len(updates), "captioned": len(updates) - errors, "errors": errors, "output": str(out_dir)}
    print(f"captioned {summary['captioned']} of {summary['samples']} samples into json field {field!r} "
          f"({errors} failed, see {field}_error) -> {out}")
    return summary


def _captioner(backend: str, model: str, base_url: Optional[str], api_key_env: str, prompt: str, num_frames: int,
               max_new_tokens: int, batch_size: int, concurrency: int, retries: int, timeout: float, device: str,
               dtype: str):
    """The captioner of ``backend`` (not loaded yet)."""
    if backend == "transformers":
        return TransformersCaptioner(model, num_frames, prompt, max_new_tokens, batch_size, device, dtype)
    if backend == "openai":
        if not base_url:
            raise ValueError("backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1")
        return OpenAICaptioner(base_url, model, api_key_env, num_frames, prompt, max_new_tokens, concurrency,
                               retries, timeout)
    raise ValueError(f"unknown caption backend {backend!r}: choose 'transformers' or 'openai'")


def _updates(items: list, results: list, field: str, hide) -> dict[str, dict]:
    """Per sample key, the json fields to write: the caption (None when it failed) and its error,
    passed through ``hide`` (no credentials in what is written); a chunk whose worker failed
    gives each of its samples that error."""
    updates = {}
    for (_, keys), result in zip(items, results):
        if failed(result):
            result = [(key, None, f"chunk: {result.error}") for key in keys]
        for key, caption, error in result:
            updates[key] = {field: caption, f"{field}_error": hide(error)}
    return updates
