"""VBench-style quality dimensions of generated videos, offline (``lvdm eval vbench``).

Each dimension follows the definition of VBench (Huang et al., CVPR 2024;
github.com/Vchitect/VBench, ``vbench/<dimension>.py``), reimplemented here on frames given as
``uint8 [T, H, W, 3]`` RGB arrays. VBench fetches its models at run time; here every model is
passed in, or loaded from a local path (or a cached hub id) before any video is read, so a
missing model fails at once, naming the path.

A video's frames are scored as decoded (VBench reads every frame with OpenCV; dynamic degree
alone keeps about 8 frames per second). The dimension's score is the mean over videos, except
for the consistencies, which VBench averages over all frame pairs of all videos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

__all__ = ["DIMENSIONS", "temporal_flickering", "vbench"]

#: Every dimension, in the order the report lists them (dynamic degree next to the
#: consistencies: a still video is perfectly consistent).
DIMENSIONS = ("temporal_flickering",)


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's temporal flickering: ``(255 - mean |frame[t+1] - frame[t]|) / 255``.

    The mean absolute difference is taken over every pixel and channel of consecutive frame
    pairs (VBench: ``vbench/temporal_flickering.py``, ``cal_score``), so a still video scores 1
    and the score falls as frames change. VBench applies it to videos filtered to static
    scenes, where any change is flicker; on moving content it measures motion too.

    Args:
        frames: ``uint8 [T, H, W, 3]`` (a video of one frame scores 1).
    """
    if len(frames) < 2:
        return 1.0
    video = frames.astype(np.float32)
    return float((255.0 - np.abs(video[1:] - video[:-1]).mean(dtype=np.float64)) / 255.0)


def _mp4s(videos: str, num_videos: Optional[int]) -> list[Path]:
    folder = Path(videos).expanduser()
    if not folder.is_dir():
        raise NotADirectoryError(f"videos folder {str(folder)!r} does not exist or is not a folder")
    paths = sorted(folder.glob("*.mp4"))[:num_videos]
    if not paths:
        raise FileNotFoundError(f"no *.mp4 files in {str(folder)!r}")
    return paths


def _check_dimensions(dimensions: list[str]) -> list[str]:
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension(s) {unknown}; choose from {', '.join(DIMENSIONS)}")
    return [d for d in DIMENSIONS if d in dimensions]


def _table(scores: dict[str, float], num_videos: int) -> str:
    lines = [f"{'dimension':<24} {'score':>8}", "-" * 33]
    lines += [f"{name:<24} {value:>8.4f}" for name, value in scores.items()]
    lines.append(f"({num_videos} videos)")
    return "\n".join(lines)


#: A dimension's scorer: ``(frames uint8 [T, H, W, 3], fps) -> (video's value, its weight in
#: the dimension's mean)``.
Scorer = Callable[[np.ndarray, float], tuple[float, float]]


def _scorers(chosen: list[str]) -> dict[str, Scorer]:
    """The scorers of the chosen dimensions; every model is loaded here, before any video."""
    builders: dict[str, Callable[[], Scorer]] = {
        "temporal_flickering": lambda: lambda frames, fps: (temporal_flickering(frames), 1.0),
    }
    return {name: builders[name]() for name in chosen}


def score_videos(paths: list[Path], scorers: dict[str, Scorer]) -> tuple[dict[str, float], list[dict]]:
    """``(scores, per-video values)``: each dimension's weighted mean over the videos."""
    from lvdm.data.video import read_frames

    per_video, weights = [], {name: [] for name in scorers}
    for path in tqdm(paths, desc="VBench", unit="video"):
        frames, fps = read_frames(str(path))
        row = {"video": str(path)}
        for name, scorer in scorers.items():
            row[name], weight = scorer(frames, fps)
            weights[name].append(weight)
        per_video.append(row)
    scores = {name: float(np.average([row[name] for row in per_video], weights=weights[name]))
              if sum(weights[name]) > 0 else float(np.mean([row[name] for row in per_video]))
              for name in scorers}
    return scores, per_video


def vbench(
    videos: str,
    dimensions: list[str] = list(DIMENSIONS),
    num_videos: Optional[int] = None,
    out: Optional[str] = None,
) -> dict:
    """VBench-style dimensions of a folder of mp4s, offline: prints a table, writes JSON.

    Dimensions (VBench's definitions, github.com/Vchitect/VBench; docs/evaluation.md):
    ``temporal_flickering`` (no model): ``(255 - mean |frame[t+1] - frame[t]|) / 255``.

    Args:
        videos: folder of ``*.mp4`` (sorted by name).
        dimensions: which dimensions to score (default: all).
        num_videos: score at most this many videos (default: all).
        out: write the report (scores, per-video values, settings) as JSON to this path.

    Returns:
        ``{"scores": {dimension: value}, "videos": [{"video": path, dimension: value}], ...}``.
    """
    from lvdm.metrics.evaluate import write_result

    chosen = _check_dimensions(list(dimensions))
    paths = _mp4s(videos, num_videos)
    scores, per_video = score_videos(paths, _scorers(chosen))
    report = {"scores": scores, "videos": per_video, "source": videos, "num_videos": len(per_video),
              "definitions": "VBench (github.com/Vchitect/VBench), reimplemented offline by lvdm"}
    write_result(report, out)
    print(_table(scores, len(per_video)))
    return report
