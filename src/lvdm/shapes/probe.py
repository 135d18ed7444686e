"""Analytic probe of the synthetic shapes world (:mod:`lvdm.shapes.synthetic`).

Reads colour, shape and direction back from frames with fixed image analysis and no learned
weights, so generated videos can be scored against their prompts: a model that generalises
to the held-out combinations should make videos the probe reads as the prompt says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from lvdm.shapes.synthetic import palette, parse_caption
from lvdm.data.video import read_frames
from lvdm.utils import read_prompt_file

__all__ = ["ATTRIBUTES", "FILL_RATIOS", "probe_frames", "probe_videos", "probe_folder"]

ATTRIBUTES = ("colour", "shape", "direction")
# Soft fill ratio (area / bounding-box area, see ``_analyse``) of each shape. Ideal values are
# 1, pi/4 and 1/2; these are the means measured on 480 rendered clips after an mp4 round trip
# (ranges: square 0.98-1.00, circle 0.77-0.80, triangle 0.55-0.60; a 12px triangle's pixel
# staircase covers its bounding box more than a true triangle's half).
FILL_RATIOS = {"square": 0.99, "circle": 0.79, "triangle": 0.57}
_LUMA = np.array([0.299, 0.587, 0.114])
_MIN_PEAK = 30  # frames whose peak luma stays below this are treated as empty (palette luma >= 93)
_MIN_SPEED = 0.25  # px/frame; slower centroids have no readable direction


def _analyse(frame: np.ndarray) -> tuple[float, tuple[float, float], np.ndarray] | None:
    """Fill ratio, centroid ``(x, y)`` and mean core colour of the object in one frame.

    The object is the largest connected region whose luma (BT.601, which H.264 keeps at full
    resolution, unlike the chroma that bleeds across edges) exceeds half the frame's peak. Its
    soft coverage is luma over the median luma of its core (the region eroded by one pixel),
    taken over the region grown by one pixel so anti-aliased edges count fractionally. The fill
    ratio is soft area / (soft width * soft height), where the soft width sums the per-column
    maximum coverage: with hard thresholds a 12px square straddling pixel boundaries reads as
    12x13 and drifts towards the circle's ratio, while the soft ratio stays 1.

    Returns ``None`` for a frame without an object.
    """
    pixels = frame.astype(np.float64)
    luma = pixels @ _LUMA
    peak = luma.max()
    if peak < _MIN_PEAK:
        return None
    labels, count = ndimage.label(luma > peak / 2)
    sizes = ndimage.sum_labels(np.ones_like(luma), labels, index=np.arange(1, count + 1))
    mask = labels == 1 + int(np.argmax(sizes))
    core = ndimage.binary_erosion(mask)
    core = core if core.any() else mask
    alpha = np.clip(luma / np.median(luma[core]), 0.0, 1.0) * ndimage.binary_dilation(mask)
    fill = alpha.sum() / (alpha.max(axis=0).sum() * alpha.max(axis=1).sum())
    rows, cols = np.indices(alpha.shape)
    centroid = ((alpha * cols).sum() / alpha.sum(), (alpha * rows).sum() / alpha.sum())
    return fill, centroid, pixels[core].mean(axis=0)


def probe_frames(frames: np.ndarray, colours: Sequence[str] | None = None) -> dict:
    """Read colour, shape and direction from one clip of the shapes world.

    Per frame, the object is the largest connected bright region (see ``_analyse``). Colour is
    the palette entry nearest the mean colour of the object's core (away from anti-aliased and
    chroma-subsampled edges); shape is the nearest of ``FILL_RATIOS`` to the median fill ratio
    (area / bounding-box area, with anti-aliased coverage); direction is the sign of the
    dominant axis of a least-squares fit of the centroid against time.

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB frames.
        colours: the palette's colour names (:func:`lvdm.shapes.synthetic.palette`; None: the
            four default colours).

    Returns:
        ``{"colour": ..., "shape": ..., "direction": ...}``; an attribute is ``None`` when it
        cannot be read (no object found; for direction, fewer than two frames with an object
        or a centroid moving less than 0.25 px/frame).
    """
    frames = np.asarray(frames)
    colour_table = palette(colours)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    found = [(t, seen) for t, seen in enumerate(map(_analyse, frames)) if seen is not None]
    result: dict = {"colour": None, "shape": None, "direction": None}
    if not found:
        return result
    times = np.array([t for t, _ in found], dtype=np.float64)
    fills, centroids, colours = zip(*(seen for _, seen in found))
    mean_colour = np.mean(colours, axis=0)
    rgb = np.array(list(colour_table.values()), dtype=np.float64)
    result["colour"] = list(colour_table)[int(np.argmin(((rgb - mean_colour) ** 2).sum(axis=1)))]
    fill = float(np.median(fills))
    result["shape"] = min(FILL_RATIOS, key=lambda name: abs(FILL_RATIOS[name] - fill))
    if len(times) >= 2:
        vx, vy = np.polyfit(times, np.asarray(centroids), 1)[0]
        if max(abs(vx), abs(vy)) >= _MIN_SPEED:
            if abs(vx) >= abs(vy):
                result["direction"] = "right" if vx > 0 else "left"
            else:  # image y grows downward
                result["direction"] = "down" if vy > 0 else "up"
    return result


def probe_videos(videos: list[str | Path], prompts: list[str], skip_frames: int = 0,
                 colours: Sequence[str] | None = None) -> dict:
    """Probe videos and compare what they show with what their prompts ask for.

    Only attributes a prompt names are scored; an unreadable attribute counts as wrong.

    Args:
        videos: mp4 paths.
        prompts: One prompt per video, in the same order.
        skip_frames: leave out the first frames of every video (see :func:`probe_folder`).
        colours: the colour names the probe reads and the prompts' colour words (see
            :func:`probe_folder`).

    Returns:
        ``{"accuracy": {attr: float | None, "all": float | None}, "counts": {attr: {"correct":
        int, "total": int}, "all": ...}, "results": [{"video", "prompt", "expected",
        "predicted", "correct": {attr: bool}}]}``; ``"all"`` means every named attribute is right.
    """
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts; they must match one to one")
    if skip_frames < 0:
        raise ValueError(f"skip_frames must be >= 0, got {skip_frames}")
    palette(colours)  # an unknown colour fails before any video is read
    counts = {name: {"correct": 0, "total": 0} for name in (*ATTRIBUTES, "all")}
    results = []
    for video, prompt in tqdm(list(zip(videos, prompts)), desc="probe", unit="video"):
        frames, _ = read_frames(video)
        if len(frames) <= skip_frames:
            raise ValueError(f"{video} has {len(frames)} frames: none left after skip_frames={skip_frames}")
        predicted = probe_frames(frames[skip_frames:], colours)
        expected = parse_caption(prompt, colours)
        correct = {name: predicted[name] == expected[name] for name in ATTRIBUTES if expected[name] is not None}
        for name, ok in correct.items():
            counts[name]["total"] += 1
            counts[name]["correct"] += int(ok)
        if correct:
            counts["all"]["total"] += 1
            counts["all"]["correct"] += int(all(correct.values()))
        results.append({"video": str(video), "prompt": prompt, "expected": expected,
                        "predicted": predicted, "correct": correct})
    accuracy = {name: (c["correct"] / c["total"] if c["total"] else None) for name, c in counts.items()}
    return {"accuracy": accuracy, "counts": counts, "results": results}


def probe_folder(videos: str, prompts: str | None = None, output: str | None = None, skip_frames: int = 0,
                 colours: list[str] | None = None) -> dict:
    """Score a folder of generated shapes-world mp4s against their prompts.

    Args:
        videos: Folder of ``*.mp4`` files (taken in sorted name order).
        prompts: Text file with one prompt per line, matched to the sorted videos. If not
            given, ``prompts.txt`` in the video folder is used, or else a sidecar ``<stem>.txt``
            next to each video.
        output: Write the result as JSON to this path.
        skip_frames: score only the frames after the first ``skip_frames``: for image-to-video
            or continuation videos, whose given frames would otherwise take part in the motion
            fit (a video that leaves its given first frame behind for a blur at the centre
            "moves" towards the centre, which the world's start positions often make the
            right direction).
        colours: the palette the probe reads colours from and the colour words of the prompts:
            names from ``COLOURS`` and ``EXTRA_COLOURS`` of :mod:`lvdm.shapes.synthetic`, e.g.
            ``[red, green, blue, yellow, magenta]`` for videos of a model taught magenta (a
            prompt's colour outside the list is not scored); None: the four default colours.

    Returns:
        The :func:`probe_videos` result (per-attribute accuracies, counts, per-video results).
    """
    folder = Path(videos)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist")
    paths = sorted(folder.glob("*.mp4"))
    if not paths:
        raise FileNotFoundError(f"no *.mp4 files in {folder}")
    prompt_file = Path(prompts) if prompts is not None else folder / "prompts.txt"
    if prompts is not None or prompt_file.is_file():
        if not prompt_file.is_file():
            raise FileNotFoundError(f"prompt file {prompt_file} does not exist")
        texts = read_prompt_file(str(prompt_file))
        if len(texts) != len(paths):
            raise ValueError(f"{prompt_file} has {len(texts)} prompts but {folder} has {len(paths)} mp4 files")
    else:
        texts = []
        for path in paths:
            sidecar = path.with_suffix(".txt")
            if not sidecar.is_file():
                raise FileNotFoundError(f"no prompt for {path}: give a prompt file, or put prompts.txt "
                                        f"in {folder}, or a sidecar {sidecar}")
            texts.append(sidecar.read_text().strip())
    result = probe_videos(paths, texts, skip_frames, colours)
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2))
    summary = "  ".join(f"{k} {'n/a' if v is None else format(v, '.3f')}" for k, v in result["accuracy"].items())
    print(f"probe accuracy over {len(paths)} videos: {summary}")
    return result
