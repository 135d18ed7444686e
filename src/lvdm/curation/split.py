"""``lvdm data split``: cut the videos of a dataset folder into clips at scene changes.

Scenes are found with PySceneDetect (``ContentDetector``: a cut where the HSV content of
consecutive frames jumps past a threshold; ``AdaptiveDetector``: where the jump is large
relative to its neighbourhood, steadier under camera motion). Scenes shorter than
``min_seconds`` are dropped, longer ones than ``max_seconds`` cut into pieces, and
``chunk_seconds`` cuts every scene into fixed-length chunks instead.

**Clips are re-encoded** (H.264 mp4, yuv420p), not cut at keyframes by copying packets: a
packet copy can only start at a keyframe, and encoders place those every 2-10 s, so a clip
would start up to seconds before its scene and carry frames of the previous shot into the
training data — which is what splitting exists to prevent. Frame-exact cuts need decoding,
hence re-encoding; at the default CRF 18 the loss is not visible. All clips of one video come
from a single decoding pass.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from lvdm.curation.engine import failed, make_engine, print_reasons
from lvdm.curation.folder import prepare_output
from lvdm.data.schema import (
    InvalidSampleError, MANIFEST_NAME, REJECTS_NAME, manifest_row, media_entry, media_kind, write_manifest, write_rejects,
)
from lvdm.data.shards import ShardWriter, read_shard, resolve_shards
from lvdm.curation.transcode import cut_segments

__all__ = ["detect_scenes", "plan_clips", "split", "prepare_stage_output"]

DETECTORS = ("content", "adaptive")


def detect_scenes(data: bytes, detector: str = "content", threshold: Optional[float] = None,
                  min_scene_frames: int = 2) -> tuple[list[tuple[int, int]], float]:
    """Scenes of a video as ``[(start_frame, end_frame), ...]`` (end exclusive) and its fps.

    Args:
        data: the video's bytes.
        detector: ``content`` or ``adaptive`` (PySceneDetect's ``ContentDetector`` /
            ``AdaptiveDetector``).
        threshold: the detector's threshold (``content``: HSV change, default 27;
            ``adaptive``: ratio to the neighbourhood, default 3).
        min_scene_frames: shortest scene the detector may report.
    """
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv

    if detector == "content":
        found = ContentDetector(min_scene_len=min_scene_frames, **({"threshold": threshold} if threshold else {}))
    elif detector == "adaptive":
        found = AdaptiveDetector(min_scene_len=min_scene_frames,
                                 **({"adaptive_threshold": threshold} if threshold else {}))
    else:
        raise ValueError(f"unknown detector {detector!r}: choose {' or '.join(DETECTORS)}")
    video = VideoStreamAv(io.BytesIO(data), name="video", suppress_output=True)
    manager = SceneManager()
    manager.auto_downscale = True  # detection on a downscaled frame: same cuts, less work
    manager.add_detector(found)
    total = manager.detect_scenes(video=video)
    scenes = [(a.get_frames(), b.get_frames()) for a, b in manager.get_scene_list(start_in_scene=True)]
    return (scenes or [(0, total)]) if total else [], float(video.frame_rate)


def plan_clips(scenes: list[tuple[int, int]], fps: float, min_seconds: float = 1.0,
               max_seconds: Optional[float] = None, chunk_seconds: Optional[float] = None) -> list[tuple[int, int]]:
    """The clips ``[(start_frame, end_frame), ...]`` cut from ``scenes``.

    With ``chunk_seconds`` every scene becomes consecutive chunks of exactly that length (a
    shorter rest is dropped); otherwise a scene longer than ``max_seconds`` becomes consecutive
    pieces of that length plus its rest. Clips shorter than ``min_seconds`` are dropped.
    """
    shortest = max(1, math.ceil(min_seconds * fps - 1e-9))
    clips = []
    for start, end in scenes:
        if chunk_seconds:
            step = max(1, round(chunk_seconds * fps))
            pieces = [(a, a + step) for a in range(start, end - step + 1, step)]
        elif max_seconds:
            step = max(1, math.floor(max_seconds * fps + 1e-9))
            pieces = [(a, min(a + step, end)) for a in range(start, end, step)]
        else:
            pieces = [(start, end)]
        clips += [(a, b) for a, b in pieces if b - a >= shortest]
    return clips


@dataclass(frozen=True)
class _Options:
    detector: str
    threshold: Optional[float]
    detect: bool
    min_seconds: float
    max_seconds: Optional[float]
    chunk_seconds: Optional[float]
    max_size: Optional[int]
    crf: int


def _unchanged(sample: dict, ext: str, meta: dict) -> dict:
    """A sample passed through as it is (an image, a 1-frame video)."""
    return {"key": sample["__key__"], ext: sample[ext], "txt": sample.get("txt", b""), "json": meta}


def _clips_of(sample: dict, options: _Options) -> list[dict]:
    """The clip samples of one video sample (raises with the reject reason)."""
    key = sample["__key__"]
    _, data = media_entry(sample)
    meta = json.loads(sample["json"]) if "json" in sample else {}
    if options.detect:
        scenes, fps = detect_scenes(data, options.detector, options.threshold,
                                    min_scene_frames=max(2, round(0.25 * float(meta.get("fps") or 8))))
    else:
        fps = float(meta.get("fps") or 0)
        if not fps or not meta.get("frames"):
            raise ValueError("the json has no fps/frames (write the folder with `lvdm data ingest`)")
        scenes = [(0, int(meta["frames"]))]
    if not scenes:
        raise ValueError("no frames decode")
    if scenes[-1][1] - scenes[0][0] == 1:  # a 1-frame video is a still, as an image is: it passes
        return [_unchanged(sample, media_entry(sample)[0], meta)]
    plan = plan_clips(scenes, fps, options.min_seconds, options.max_seconds, options.chunk_seconds)
    if not plan:
        raise ValueError(f"no clip of at least min_seconds={options.min_seconds} "
                         f"({len(scenes)} scenes, longest {max(e - s for s, e in scenes) / fps:.2f} s)")
    clips = []
    for index, ((start, end), clip) in enumerate(zip(plan, cut_segments(data, plan, options.max_size, options.crf))):
        clip_meta = {**meta, "source_key": key, "start": round(start / fps, 6), "end": round(end / fps, 6),
                     "start_frame": start, "end_frame": end, "scene_index": index, "codec": "h264",
                     "fps": round(clip.fps, 6), "frames": clip.frames, "width": clip.width, "height": clip.height,
                     "duration": round(clip.frames / clip.fps, 6), "aspect": round(clip.width / clip.height, 6)}
        clips.append({"key": f"{key}-{index:04d}", "mp4": clip.data, "txt": sample.get("txt", b""),
                      "json": clip_meta})
    return clips


def _split_shard(task: tuple[str, str, _Options]) -> dict:
    """Split the videos of one input shard into an output shard of the same name."""
    source, out, options = task
    rows, rejects, videos = [], [], 0
    with ShardWriter(str(Path(out) / Path(source).name), max_count=None) as sink:
        for sample in read_shard(source):
            key = sample["__key__"]
            try:
                ext, _ = media_entry(sample)
                meta = json.loads(sample["json"]) if "json" in sample else {}
                if media_kind(ext) == "image" or meta.get("frames") == 1:  # a still has no scenes: it passes
                    new = [_unchanged(sample, ext, meta)]
                else:
                    videos += 1
                    new = _clips_of(sample, options)
            except Exception as exc:  # one unreadable video is one reject, never the end of the run
                rejects.append((key, f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)))
                continue
            try:
                for clip in new:
                    rows.append(manifest_row(clip["key"], sink.write(clip), clip["json"]))
            except InvalidSampleError as exc:  # a clip key equal to another sample's key
                rejects.append((key, str(exc)))
    return {"rows": rows, "rejects": rejects, "videos": videos}


def split(
    source: Union[str, list[str]],
    out: str,
    detector: Literal["content", "adaptive"] = "content",
    threshold: Optional[float] = None,
    detect: bool = True,
    min_seconds: float = 1.0,
    max_seconds: Optional[float] = None,
    chunk_seconds: Optional[float] = None,
    max_size: Optional[int] = None,
    crf: int = 18,
    engine: Literal["local", "ray"] = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    overwrite: bool = False,
) -> dict:
    """Cut every video of a dataset folder into scene clips: a new dataset folder.

    Each clip is a sample ``<source key>-0000``, ``-0001``... (H.264 mp4, re-encoded for
    frame-exact cuts: see the module docstring) whose json is the source's json plus
    ``source_key``, ``start`` and ``end`` (seconds), ``start_frame``, ``end_frame``,
    ``scene_index``, and the clip's own codec, fps, frames, width, height, duration and aspect;
    its caption is the source's. Stills — images and 1-frame videos — pass through unchanged
    (counted in ``images``), as they are: they have no scenes to cut. A video that yields no clip
    (all scenes shorter than ``min_seconds``) or cannot be decoded is listed in
    ``rejects.csv`` with the reason. Input shard ``shard-000003.tar`` gives output shard
    ``shard-000003.tar``.

    Args:
        source: the input dataset folder (or its shards: a glob, brace pattern or list).
        out: the output dataset folder.
        detector: ``content`` or ``adaptive``.
        threshold: the detector's threshold (``None``: PySceneDetect's default).
        detect: ``False`` skips scene detection (each video is one scene; use with
            ``chunk_seconds`` for fixed-length chunks only).
        min_seconds: drop clips shorter than this.
        max_seconds: cut longer scenes into pieces of at most this length.
        chunk_seconds: cut every scene into chunks of exactly this length instead.
        max_size: cap the clips' longer side in pixels.
        crf: x264 quality of the clips (lower is better).
        engine: ``local`` (a process pool) or ``ray`` (Ray Data).
        workers: processes (local; 0 = in this process) or Ray actors.
        ray_address: with ``engine=ray``: ``None`` (a local Ray), ``auto`` or ``ray://host:port``.
        overwrite: allow writing into a non-empty ``out``.

    Returns:
        Summary: ``out``, ``videos``, ``clips``, ``images``, ``rejected``, ``shards``.
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}: choose {' or '.join(DETECTORS)}")
    if min_seconds < 0 or (max_seconds is not None and max_seconds <= 0) or (chunk_seconds is not None and chunk_seconds <= 0):
        raise ValueError("min_seconds must be >= 0 and max_seconds, chunk_seconds > 0")
    shards = resolve_shards(source)
    root = prepare_stage_output(out, shards, overwrite)
    options = _Options(detector, threshold, detect, min_seconds, max_seconds, chunk_seconds, max_size, crf)
    tasks = [(shard, str(root), options) for shard in shards]
    results = make_engine(engine, workers, ray_address).map(_split_shard, tasks, desc="split shards")
    rows, rejects, videos = _merge(tasks, results)
    write_manifest(rows, root / MANIFEST_NAME)
    write_rejects(rejects, root / REJECTS_NAME)
    clips = sum(1 for row in rows if "source_key" in row)
    images = len(rows) - clips
    reasons = Counter(reason.split(" (")[0] for _, reason in rejects)
    print(f"split {videos} videos into {clips} clips in {root}/ ({images} stills passed through: images and "
          f"1-frame videos; {len(rejects)} videos rejected)")
    print_reasons(reasons)
    return {"out": str(root), "videos": videos, "clips": clips, "images": images, "rejected": len(rejects),
            "shards": sorted({str(root / row["shard"]) for row in rows})}


def _merge(tasks: list[tuple], results: list) -> tuple[list[dict], list[tuple[str, str]], int]:
    """(manifest rows, rejects, videos read) of all shards; a shard whose worker failed is one reject."""
    rows, rejects, videos = [], [], 0
    for (shard, _, _), result in zip(tasks, results):
        if failed(result):
            rejects.append((shard, f"worker failed on the whole shard: {result.error}"))
            continue
        rows += result["rows"]
        rejects += result["rejects"]
        videos += result["videos"]
    return rows, rejects, videos


def prepare_stage_output(out: str, shards: list[str], overwrite: bool) -> Path:
    """Check and create the output folder of a stage that writes one shard per input shard,
    under the input shard's name (split, filter)."""
    names = [Path(s).name for s in shards]
    if len(set(names)) < len(names):
        raise ValueError(f"input shards share file names ({sorted({n for n in names if names.count(n) > 1})}); "
                         f"output shards keep the input names")
    for folder in sorted({str(Path(s).parent) for s in shards}):
        root = prepare_output(folder, out, overwrite)
    return root
