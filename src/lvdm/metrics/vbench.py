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
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lvdm.utils import resolve_device

__all__ = ["DIMENSIONS", "RaftFlow", "dynamic_degree", "dynamic_thresholds", "is_dynamic", "temporal_flickering",
           "top_flow_magnitude", "vbench"]

#: Every dimension, in the order the report lists them (dynamic degree next to the
#: consistencies: a still video is perfectly consistent).
DIMENSIONS = ("temporal_flickering", "dynamic_degree")

#: Optical flow between two frames: ``(image1, image2)``, each ``float [N, 3, H, W]`` in
#: [0, 255], to the flow ``[N, 2, H, W]`` in pixels (x, y) at the frames' size.
FlowFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


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


def top_flow_magnitude(flow: torch.Tensor) -> float:
    """The mean of the largest 5% of a flow field's magnitudes (VBench ``DynamicDegree.get_score``).

    Args:
        flow: ``[2, H, W]`` in pixels.
    """
    magnitude = flow.double().norm(dim=0).flatten()
    count = max(1, int(magnitude.numel() * 0.05))  # VBench's int(h * w * 0.05), at least one pixel
    return float(magnitude.topk(count).values.mean())


def dynamic_thresholds(height: int, width: int, num_frames: int, fps: float) -> tuple[float, int]:
    """VBench's ``(magnitude threshold, pairs needed)`` for a video (``DynamicDegree.set_params``):
    ``max(1, 8 / fps) * 6 * min(H, W) / 256`` pixels, and ``round(4 * num_frames / 16)`` pairs."""
    return max(1.0, 8.0 / fps) * 6.0 * (min(height, width) / 256.0), round(4 * (num_frames / 16.0))


def is_dynamic(magnitudes: list[float], threshold: float, pairs_needed: int) -> bool:
    """Whether at least ``pairs_needed`` frame pairs move more than ``threshold`` (VBench
    ``DynamicDegree.check_move``; a video with no pair is not dynamic)."""
    return bool(magnitudes) and sum(m > threshold for m in magnitudes) >= pairs_needed


def dynamic_degree(frames: np.ndarray, fps: float, flow: FlowFn) -> bool:
    """VBench's dynamic degree of one video: whether it moves (``vbench/dynamic_degree.py``).

    Frames are kept about 8 a second (every ``max(1, round(fps / 8))``-th); for each
    consecutive pair, the optical flow's top-5% mean magnitude (:func:`top_flow_magnitude`) is
    compared with a threshold scaled by the resolution and frame rate; the video is dynamic
    when enough pairs pass it (:func:`dynamic_thresholds`, :func:`is_dynamic`). The
    dimension's score is the fraction of dynamic videos. VBench's flow is RAFT
    (:class:`RaftFlow`).

    Args:
        frames: ``uint8 [T, H, W, 3]``.
        fps: the video's frame rate.
        flow: the optical flow (:data:`FlowFn`).
    """
    frames = frames[:: max(1, round(fps / 8))]
    threshold, pairs_needed = dynamic_thresholds(frames.shape[1], frames.shape[2], len(frames), fps)
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    magnitudes = [top_flow_magnitude(flow(video[t : t + 1], video[t + 1 : t + 2])[0]) for t in range(len(video) - 1)]
    return is_dynamic(magnitudes, threshold, pairs_needed)


def _raft_builder(arch: str):
    """torchvision's RAFT constructor, or an ImportError saying what is missing."""
    if arch not in ("raft_large", "raft_small"):
        raise ValueError(f"flow_arch {arch!r} is not a RAFT; choose raft_large or raft_small")
    try:
        from torchvision.models import optical_flow
    except Exception as err:  # a torchvision built for another torch fails with a RuntimeError
        raise ImportError(f"dynamic_degree needs torchvision's RAFT (install the torchvision built for your "
                          f"torch {torch.__version__}): {type(err).__name__}: {err}") from err
    return getattr(optical_flow, arch)


def _state_dict(path: str, what: str) -> dict:
    """A state dict file (``.safetensors``, or ``.pth``/``.pt`` loaded with ``weights_only=True``)."""
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{what} {str(Path(path).expanduser())!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(Path(path).expanduser()))
    return torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)


class RaftFlow:
    """torchvision's RAFT as a :data:`FlowFn`, with weights from a local state dict file.

    VBench uses RAFT (the authors' ``raft-things`` weights, 20 refinement steps). torchvision's
    RAFT takes its own state dicts (``Raft_Large_Weights`` files, e.g. ``raft_large_C_T_V2``),
    downloaded beforehand: nothing is fetched here. Frames are padded (edge values) to a
    multiple of 8, as VBench's ``InputPadder`` does; frames with a side under 128 pixels (too
    small for RAFT's correlation pyramid) are first enlarged by an integer factor, and the flow
    is brought back to the frames' size and pixels.

    Args:
        weights: the state dict file (``.pth``/``.safetensors``).
        arch: ``raft_large`` (VBench's size) or ``raft_small``.
        iters: flow refinement steps (VBench: 20).
        device: where RAFT runs.
    """

    def __init__(self, weights: str, arch: str = "raft_large", iters: int = 20, device: str = "cpu") -> None:
        state = _state_dict(weights, "RAFT weights")  # a missing file fails before torchvision is imported
        self.model = _raft_builder(arch)(weights=None, progress=False)
        self.model.load_state_dict(state)
        self.model.eval().to(device)
        self.iters, self.device = iters, torch.device(device)

    @torch.inference_mode()
    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        height, width = image1.shape[-2:]
        scale = -(-128 // min(height, width))  # ceil: both sides at least 128
        pair = torch.cat([image1, image2]).to(self.device) / 127.5 - 1.0  # RAFT's [-1, 1]
        if scale > 1:
            pair = F.interpolate(pair, scale_factor=scale, mode="bilinear", align_corners=False)
        pad_h, pad_w = -pair.shape[-2] % 8, -pair.shape[-1] % 8
        pair = F.pad(pair, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")
        flow = self.model(pair[: len(image1)], pair[len(image1) :], num_flow_updates=self.iters)[-1]
        flow = flow[..., pad_h // 2 : pad_h // 2 + height * scale, pad_w // 2 : pad_w // 2 + width * scale]
        return (F.avg_pool2d(flow, scale) / scale if scale > 1 else flow).float().cpu()


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


def _needs(value: Optional[str], option: str, dimension: str, what: str) -> str:
    if value is None:
        raise ValueError(f"{dimension} needs {option}= ({what}), or leave {dimension} out of dimensions")
    return value


def _scorers(chosen: list[str], settings: dict) -> dict[str, Scorer]:
    """The scorers of the chosen dimensions; every model is loaded here, before any video."""
    device = str(resolve_device(settings["device"]))

    def dynamic() -> Scorer:
        weights = _needs(settings["flow_weights"], "flow_weights", "dynamic_degree", "a torchvision RAFT state dict")
        flow = RaftFlow(weights, settings["flow_arch"], settings["flow_iters"], device)
        return lambda frames, fps: (float(dynamic_degree(frames, fps, flow)), 1.0)

    builders: dict[str, Callable[[], Scorer]] = {
        "temporal_flickering": lambda: lambda frames, fps: (temporal_flickering(frames), 1.0),
        "dynamic_degree": dynamic,
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
    flow_weights: Optional[str] = None,
    flow_arch: str = "raft_large",
    flow_iters: int = 20,
    num_videos: Optional[int] = None,
    device: str = "auto",
    out: Optional[str] = None,
) -> dict:
    """VBench-style dimensions of a folder of mp4s, offline: prints a table, writes JSON.

    Dimensions (VBench's definitions, github.com/Vchitect/VBench; docs/evaluation.md):
    ``temporal_flickering`` (no model): ``(255 - mean |frame[t+1] - frame[t]|) / 255``;
    ``dynamic_degree`` (RAFT optical flow): the fraction of videos that move, judged on the
    top-5% flow magnitudes of their frame pairs against a threshold scaled by resolution.

    Args:
        videos: folder of ``*.mp4`` (sorted by name).
        dimensions: which dimensions to score (default: all).
        flow_weights: torchvision RAFT state dict file (``.pth``/``.safetensors``), for
            ``dynamic_degree``.
        flow_arch: ``raft_large`` (VBench's) or ``raft_small``, the architecture of ``flow_weights``.
        flow_iters: RAFT refinement steps (VBench: 20).
        num_videos: score at most this many videos (default: all).
        device: ``cpu``, ``cuda``… or ``auto`` (where the models run).
        out: write the report (scores, per-video values, settings) as JSON to this path.

    Returns:
        ``{"scores": {dimension: value}, "videos": [{"video": path, dimension: value}], ...}``.
    """
    from lvdm.metrics.evaluate import write_result

    chosen = _check_dimensions(list(dimensions))
    settings = {"flow_weights": flow_weights, "flow_arch": flow_arch, "flow_iters": flow_iters, "device": device}
    paths = _mp4s(videos, num_videos)
    scores, per_video = score_videos(paths, _scorers(chosen, settings))
    report = {"scores": scores, "videos": per_video, "source": videos, "num_videos": len(per_video), **settings,
              "definitions": "VBench (github.com/Vchitect/VBench), reimplemented offline by lvdm"}
    write_result(report, out)
    print(_table(scores, len(per_video)))
    return report
