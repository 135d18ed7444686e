"""VBench-style quality dimensions of generated videos, offline (``lvdm eval vbench``).

Each dimension follows the definition of VBench (Huang et al., CVPR 2024;
github.com/Vchitect/VBench, ``vbench/<dimension>.py``), reimplemented here on frames given as
``uint8 [T, H, W, 3]`` RGB arrays. VBench fetches its models at run time; here every model is
passed in, or loaded from a local path (or a cached hub id) before any video is read, so a
missing model fails at once, naming the path.

A video's frames are scored as decoded (VBench reads every frame with OpenCV; dynamic degree
alone keeps about 8 frames per second). The dimension's score is the mean over videos, except
for the consistencies, which VBench averages over all frame pairs of all videos.

Imaging quality (VBench: MUSIQ trained on SPAQ, through pyiqa) is absent: no package ships
MUSIQ's weights (pyiqa, and piq for BRISQUE, download them at run time), and a model-free
sharpness or noise statistic is not the same measurement (docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from tqdm.auto import tqdm

from lvdm.metrics.optical_flow import LucasKanadeFlow
from lvdm.utils import resolve_device

__all__ = ["DIMENSIONS", "FLOWS", "FrameEncoder", "RaftFlow", "aesthetic_quality", "blend_midpoint", "clip_transform",
           "consistency", "dino_transform", "dynamic_degree", "dynamic_thresholds", "is_dynamic", "load_aesthetic",
           "load_clip_image", "load_dino", "motion_smoothness", "score_videos", "temporal_flickering",
           "top_flow_magnitude", "vbench", "MODEL_OPTIONS", "VBenchScores"]

#: Every dimension, in the order the report lists them (dynamic degree next to the
#: consistencies: a still video is perfectly consistent).
DIMENSIONS = ("temporal_flickering", "motion_smoothness", "subject_consistency", "background_consistency",
              "dynamic_degree", "aesthetic_quality")

#: The optical flows ``dynamic_degree`` can use: torchvision's RAFT (VBench's model, from a
#: local weights file) or the model-free pyramidal Lucas–Kanade
#: (:class:`lvdm.metrics.optical_flow.LucasKanadeFlow`).
FLOWS = ("raft", "lucas_kanade")

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


def blend_midpoint(frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """The model-free frame interpolation: the mean of the two frames (``float32``)."""
    return (frame0.astype(np.float32) + frame1.astype(np.float32)) / 2.0


def motion_smoothness(frames: np.ndarray, interpolate: Callable = blend_midpoint) -> float:
    """VBench's motion smoothness formula, with a frame interpolator given here.

    The odd frames are dropped, rebuilt by interpolating between their even neighbours, and
    compared with the real ones: ``(255 - mean |real - interpolated|) / 255``
    (``vbench/motion_smoothness.py``, ``MotionSmoothness.motion_score`` / ``vfi_score``). VBench's
    interpolator is the AMT-S model, which is not packaged; lvdm's default is
    :func:`blend_midpoint` (the mean of the neighbours), exact for still videos and linear
    fades and penalising a frame its neighbours do not predict (shuffled or jittering frames),
    but also ghosting steady motion: its values are lower than VBench's on moving content and
    compare only with other runs of this default. Any ``(frame0, frame1) -> middle frame``
    (e.g. an AMT wrapper) can replace it.

    Args:
        frames: ``uint8 [T, H, W, 3]`` (under 3 frames: nothing to rebuild, the score is 1).
        interpolate: ``(frame0, frame1) -> middle frame`` on ``[H, W, 3]`` arrays in [0, 255].
    """
    kept, held_out = frames[0::2], frames[1::2]
    if len(kept) < 2:
        return 1.0
    errors = [np.abs(held_out[i].astype(np.float32) - interpolate(kept[i], kept[i + 1])).mean(dtype=np.float64)
              for i in range(len(kept) - 1)]
    return float((255.0 - np.mean(errors)) / 255.0)


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


def consistency(features: torch.Tensor) -> float:
    """VBench's subject / background consistency of one video, from its frames' features.

    For every frame after the first: the mean of its cosine similarity to the previous frame
    and to the first frame, each clamped at 0; the video's value is the mean over those frames
    (``vbench/subject_consistency.py`` with DINO features, ``background_consistency.py`` with
    CLIP image features). Identical frames give 1; a video of one frame scores 1. VBench's
    dimension score averages over all frames of all videos (each video weighs its pairs).

    Args:
        features: ``[T, D]``, one row per frame.
    """
    if len(features) < 2:
        return 1.0
    unit = F.normalize(features.double(), dim=-1)
    to_previous = (unit[1:] * unit[:-1]).sum(-1).clamp(0.0, 1.0)
    to_first = (unit[1:] * unit[:1]).sum(-1).clamp(0.0, 1.0)
    return float(((to_previous + to_first) / 2).mean())


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _normalise(video: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    return (video - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _resize_short(frames: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """``uint8 [T, H, W, 3]`` → ``float [T, 3, h, w]`` in [0, 1], the shorter side ``size`` (as
    torchvision's ``Resize(size, antialias=False)`` that VBench uses)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    height, width = video.shape[-2:]
    short, long = min(height, width), max(height, width)
    other = int(size * long / short)
    out = (size, other) if height <= width else (other, size)
    return F.interpolate(video, size=out, mode=mode, align_corners=False).clamp(0.0, 1.0)


def dino_transform(frames: np.ndarray, size: int) -> torch.Tensor:
    """VBench's ``dino_transform``: shorter side to ``size`` (bilinear), ImageNet normalisation."""
    return _normalise(_resize_short(frames, size, "bilinear"), IMAGENET_MEAN, IMAGENET_STD)


def clip_transform(frames: np.ndarray, size: int) -> torch.Tensor:
    """VBench's ``clip_transform``: shorter side to ``size`` (bicubic), centre crop ``size`` x
    ``size``, CLIP's normalisation."""
    video = _resize_short(frames, size, "bicubic")
    top, left = (video.shape[-2] - size) // 2, (video.shape[-1] - size) // 2
    return _normalise(video[..., top : top + size, left : left + size], CLIP_MEAN, CLIP_STD)


class FrameEncoder:
    """Per-frame features of a video with an image model: ``frames uint8 [T, H, W, 3] -> [T, D]``.

    Args:
        model: the image model (eval mode).
        transform: ``(frames, size) -> pixel_values [T, 3, h, w]``.
        size: the model's input size (its config's ``image_size``).
        features: ``(model, pixel_values) -> [N, D]``.
        device: where the model runs.
        batch_size: frames per forward.
    """

    def __init__(self, model, transform: Callable, size: int, features: Callable, device: str = "cpu",
                 batch_size: int = 32) -> None:
        self.model = model.eval().to(device)
        self.transform, self.size, self.features = transform, size, features
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        pixels = self.transform(frames, self.size)
        out = [self.features(self.model, pixels[i : i + self.batch_size].to(self.device)).float().cpu()
               for i in range(0, len(pixels), self.batch_size)]
        return torch.cat(out)


def _pretrained(pretrained: str, what: str):
    """A transformers model from a local folder (or a cached / reachable hub id)."""
    from transformers import AutoModel

    from lvdm.curation.hub import locate_model

    return AutoModel.from_pretrained(locate_model(pretrained, what))


def _class_token(model, pixels: torch.Tensor) -> torch.Tensor:
    import inspect

    interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    out = model(pixel_values=pixels, **({"interpolate_pos_encoding": True} if interpolate else {}))
    return out.last_hidden_state[:, 0]


def load_dino(pretrained: str, device: str = "cpu") -> FrameEncoder:
    """DINO frame features for subject consistency: the final class token, as VBench's
    ``dino_vitb16`` gives (a ``transformers`` ``ViTModel`` such as ``facebook/dino-vitb16``, or a
    ``Dinov2Model``), from a local ``save_pretrained`` folder or a cached hub id.

    Raises:
        FileNotFoundError: a local folder that does not exist (named).
        TypeError: the folder holds another kind of model.
    """
    model = _pretrained(pretrained, "DINO model")
    if type(model).__name__ not in ("ViTModel", "Dinov2Model", "Dinov2WithRegistersModel"):
        raise TypeError(f"{pretrained!r} loads a {type(model).__name__}; subject consistency needs a DINO "
                        "ViTModel or Dinov2Model")
    return FrameEncoder(model, dino_transform, model.config.image_size, _class_token, device)


def _clip_image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    from lvdm.metrics.clipscore import ClipFeatures

    if hasattr(model, "get_image_features"):  # a whole CLIPModel: the projected embedding
        return ClipFeatures._tensor(model.get_image_features(pixel_values=pixels))
    out = model(pixel_values=pixels)
    return out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output


def load_clip_image(pretrained: str, device: str = "cpu") -> FrameEncoder:
    """CLIP image features for background consistency (VBench: ViT-B/32's ``encode_image``):
    a ``CLIPModel`` or ``CLIPVisionModelWithProjection`` gives that projected embedding; a
    ``CLIPVisionModel`` (no projection) its pooled output, which is not the same space. From a
    local ``save_pretrained`` folder or a cached hub id.

    Raises:
        FileNotFoundError: a local folder that does not exist (named).
        TypeError: the folder holds no CLIP vision model.
    """
    model = _pretrained(pretrained, "CLIP model")
    config = getattr(model.config, "vision_config", model.config)
    if "CLIP" not in type(model).__name__:
        raise TypeError(f"{pretrained!r} loads a {type(model).__name__}; background consistency needs a CLIP model")
    return FrameEncoder(model, clip_transform, config.image_size, _clip_image_features, device)


def load_aesthetic(clip: str, head: str, device: str = "cpu", batch_size: int = 32):
    """lvdm's LAION aesthetic scorer (:class:`lvdm.curation.scorers.AestheticScorer`) for
    :func:`aesthetic_quality`, its head and CLIP loaded now (a missing local one fails, named).

    Args:
        clip: CLIP model folder (with its processor) or cached hub id; VBench and LAION's head
            use ``openai/clip-vit-large-patch14``.
        head: the LAION head's state dict file (VBench: ``sa_0_4_vit_l_14_linear.pth``).
    """
    import sys

    from lvdm.curation.scorers import AestheticScorer

    scorer = AestheticScorer(clip, head, num_frames=sys.maxsize, device=device, batch_size=batch_size)  # every frame
    scorer.load()
    return scorer


def aesthetic_quality(frames: np.ndarray, scorer) -> float:
    """VBench's aesthetic quality of one video: the LAION aesthetic predictor's score of every
    frame, divided by 10 and averaged (``vbench/aesthetic_quality.py``).

    The predictor is a linear head on the L2-normalised CLIP ViT-L/14 image embedding (LAION's
    ``sa_0_4_vit_l_14_linear``), here lvdm's ``AestheticScorer`` (:func:`load_aesthetic`);
    frames go through the CLIP processor (resize, centre crop, normalisation), where VBench
    resizes tensors without antialiasing: scores differ slightly from VBench's on downscaled
    frames.

    Args:
        frames: ``uint8 [T, H, W, 3]``.
        scorer: from :func:`load_aesthetic`.
    """
    from lvdm.curation.frames import Clip

    clip = Clip(key="video", kind="video", total=len(frames), frames=dict(enumerate(frames)))
    return scorer.score_batch([clip])[0]["aesthetic"] / 10.0


def _mp4s(videos: str, num_videos: Optional[int]) -> list[Path]:
    folder = Path(videos).expanduser()
    if not folder.is_dir():
        raise NotADirectoryError(f"videos folder {str(folder)!r} does not exist or is not a folder")
    paths = sorted(folder.glob("*.mp4"))[:num_videos]
    if not paths:
        raise FileNotFoundError(f"no *.mp4 files in {str(folder)!r}")
    return paths


def _check_dimensions(dimensions: list[str], flow: str = "raft") -> list[str]:
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension(s) {unknown}; choose from {', '.join(DIMENSIONS)}")
    if flow not in FLOWS:
        raise ValueError(f"flow {flow!r} is not one of {', '.join(FLOWS)}")
    return [d for d in DIMENSIONS if d in dimensions]


def _table(scores: dict[str, float], num_videos: int, num_skipped: int) -> str:
    lines = [f"{'dimension':<24} {'score':>8}", "-" * 33]
    lines += [f"{name:<24} {value:>8.4f}" for name, value in scores.items()]
    lines.append(f"({num_videos} videos" + (f", {num_skipped} skipped: they do not decode)" if num_skipped else ")"))
    if any(name.endswith("_consistency") for name in scores):
        lines.append("read consistency next to dynamic_degree: a still video is perfectly consistent")
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
        if settings["flow"] == "lucas_kanade":
            flow = LucasKanadeFlow(device=device)
        else:
            weights = _needs(settings["flow_weights"], "flow_weights", "dynamic_degree",
                             "a torchvision RAFT state dict; or flow=lucas_kanade, model-free")
            flow = RaftFlow(weights, settings["flow_arch"], settings["flow_iters"], device)
        return lambda frames, fps: (float(dynamic_degree(frames, fps, flow)), 1.0)

    def consistent(loader: Callable, option: str, dimension: str, what: str) -> Scorer:
        encoder = loader(_needs(settings[option], option, dimension, what), device)
        return lambda frames, fps: (consistency(encoder(frames)), max(len(frames) - 1, 0))

    def aesthetic() -> Scorer:
        clip = _needs(settings["aesthetic_clip"], "aesthetic_clip", "aesthetic_quality", "a CLIP folder")
        head = _needs(settings["aesthetic_head"], "aesthetic_head", "aesthetic_quality", "the LAION head file")
        scorer = load_aesthetic(clip, head, device)
        return lambda frames, fps: (aesthetic_quality(frames, scorer), 1.0)

    builders: dict[str, Callable[[], Scorer]] = {
        "temporal_flickering": lambda: lambda frames, fps: (temporal_flickering(frames), 1.0),
        "motion_smoothness": lambda: lambda frames, fps: (motion_smoothness(frames), 1.0),
        "subject_consistency": lambda: consistent(load_dino, "dino", "subject_consistency", "a DINO model folder"),
        "background_consistency": lambda: consistent(load_clip_image, "clip", "background_consistency",
                                                     "a CLIP model folder"),
        "dynamic_degree": dynamic,
        "aesthetic_quality": aesthetic,
    }
    return {name: builders[name]() for name in chosen}


#: The model options of the dimensions (those of :func:`vbench`) and their defaults.
MODEL_OPTIONS = {"dino": None, "clip": None, "flow": "raft", "flow_weights": None, "flow_arch": "raft_large",
                 "flow_iters": 20, "aesthetic_clip": None, "aesthetic_head": None}


class VBenchScores(Metric):
    """VBench-style dimensions of generated videos as a torchmetrics ``Metric`` (what
    :class:`~lvdm.training.callbacks.evaluation.PeriodicEvaluation` logs during training).

    ``update(videos, fps)`` scores ``[B, 3, T, H, W]`` videos in [-1, 1] (turned into ``uint8``
    frames as ``lvdm sample`` writes them, but not mp4-coded); ``compute()`` gives
    ``{dimension: score}``, each dimension averaged with the weights of :func:`vbench` (the
    consistencies over frame pairs), summed across processes. The models load now.

    Args:
        dimensions: which of :data:`DIMENSIONS`.
        device: where the models run.
        **options: the models' options (:data:`MODEL_OPTIONS`, as :func:`vbench` takes them).
    """

    full_state_update = False

    def __init__(self, dimensions: list[str], device: str = "cpu", **options) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(MODEL_OPTIONS))
        if unknown:
            raise ValueError(f"unknown VBench option(s) {unknown}; choose from {', '.join(MODEL_OPTIONS)}")
        settings = {**MODEL_OPTIONS, **options, "device": device}
        self.dimensions = _check_dimensions(list(dimensions), settings["flow"])
        if not self.dimensions:
            raise ValueError(f"no VBench dimension chosen; choose from {', '.join(DIMENSIONS)}")
        self._scorers = _scorers(self.dimensions, settings)
        for name in ("weighted", "weights", "plain"):
            self.add_state(name, torch.zeros(len(self.dimensions), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, videos: torch.Tensor, fps: float = 8.0) -> None:
        frames = ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for video in frames.permute(0, 2, 3, 4, 1).cpu().numpy():  # [T, H, W, 3] each
            with torch.autocast(videos.device.type, enabled=False):  # the models in full precision, as offline
                values = [self._scorers[name](video, fps) for name in self.dimensions]
            value, weight = (torch.tensor(column, dtype=torch.float64, device=self.count.device)
                             for column in zip(*values))
            self.weighted += value * weight
            self.weights += weight
            self.plain += value
            self.count += 1

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("VBenchScores has no video: update it first")
        means = torch.where(self.weights > 0, self.weighted / self.weights.clamp_min(1e-300), self.plain / self.count)
        return {name: float(value) for name, value in zip(self.dimensions, means)}


def score_videos(paths: list[Path], scorers: dict[str, Scorer]) -> tuple[dict[str, float], list[dict], list[dict]]:
    """``(scores, per-video values, skipped)``: each dimension's weighted mean over the videos;
    a video that does not decode is skipped and listed with its error."""
    from lvdm.data.video import VideoDecodeError, read_frames

    per_video, skipped, weights = [], [], {name: [] for name in scorers}
    for path in tqdm(paths, desc="VBench", unit="video"):
        try:
            frames, fps = read_frames(str(path))
        except VideoDecodeError as err:
            skipped.append({"video": str(path), "error": str(err)})
            continue
        row = {"video": str(path)}
        for name, scorer in scorers.items():
            row[name], weight = scorer(frames, fps)
            weights[name].append(weight)
        per_video.append(row)
    if not per_video:
        raise ValueError(f"no video decoded of {len(paths)} (first error: {skipped[0]['error']})")
    scores = {name: float(np.average([row[name] for row in per_video], weights=weights[name]))
              if sum(weights[name]) > 0 else float(np.mean([row[name] for row in per_video]))
              for name in scorers}
    return scores, per_video, skipped


def vbench(
    videos: str,
    dimensions: list[str] = list(DIMENSIONS),
    dino: Optional[str] = None,
    clip: Optional[str] = None,
    flow: str = "raft",
    flow_weights: Optional[str] = None,
    flow_arch: str = "raft_large",
    flow_iters: int = 20,
    aesthetic_clip: Optional[str] = None,
    aesthetic_head: Optional[str] = None,
    num_videos: Optional[int] = None,
    device: str = "auto",
    out: Optional[str] = None,
) -> dict:
    """VBench-style dimensions of a folder of mp4s, offline: prints a table, writes JSON.

    Dimensions (VBench's definitions, github.com/Vchitect/VBench; docs/evaluation.md):
    ``temporal_flickering`` (no model): ``(255 - mean |frame[t+1] - frame[t]|) / 255``;
    ``motion_smoothness`` (no model; VBench's AMT interpolator replaced by the mean of the
    neighbouring frames, so only comparable with lvdm's own runs): odd frames rebuilt from
    their even neighbours, ``(255 - mean |real - rebuilt|) / 255``;
    ``subject_consistency`` (DINO) / ``background_consistency`` (CLIP image features): the mean
    over frames of the average of each frame's cosine similarity to the previous and the first
    frame; ``dynamic_degree`` (optical flow: RAFT, or the model-free Lucas–Kanade): the
    fraction of videos that move, judged on the top-5% flow magnitudes of their frame pairs
    against a threshold scaled by resolution;
    ``aesthetic_quality`` (CLIP + LAION head): the mean over frames of the LAION score / 10.

    Args:
        videos: folder of ``*.mp4`` (sorted by name).
        dimensions: which dimensions to score (default: all).
        dino: DINO model folder (``save_pretrained`` of a ViTModel / Dinov2Model, e.g.
            ``facebook/dino-vitb16``), for ``subject_consistency``.
        clip: CLIP model folder (``CLIPModel``, ``CLIPVisionModelWithProjection`` or
            ``CLIPVisionModel``; VBench uses ViT-B/32), for ``background_consistency``.
        flow: the optical flow of ``dynamic_degree``: ``raft`` (VBench's, needs
            ``flow_weights``) or ``lucas_kanade`` (model-free pyramidal Lucas–Kanade; its
            magnitudes are judged on VBench's RAFT thresholds, docs/evaluation.md).
        flow_weights: torchvision RAFT state dict file (``.pth``/``.safetensors``), for
            ``dynamic_degree`` with ``flow=raft``.
        flow_arch: ``raft_large`` (VBench's) or ``raft_small``, the architecture of ``flow_weights``.
        flow_iters: RAFT refinement steps (VBench: 20).
        aesthetic_clip: CLIP model folder with its processor (VBench: ViT-L/14), for
            ``aesthetic_quality``.
        aesthetic_head: LAION aesthetic head state dict file (``sa_0_4_vit_l_14_linear.pth``).
        num_videos: score at most this many videos (default: all).
        device: ``cpu``, ``cuda``… or ``auto`` (where the models run).
        out: write the report (scores, per-video values, settings) as JSON to this path.

    Returns:
        ``{"scores": {dimension: value}, "videos": [{"video": path, dimension: value}], ...}``.
    """
    from lvdm.metrics.evaluate import write_result

    chosen = _check_dimensions(list(dimensions), flow)
    settings = {"dino": dino, "clip": clip, "flow": flow, "flow_weights": flow_weights, "flow_arch": flow_arch,
                "flow_iters": flow_iters, "aesthetic_clip": aesthetic_clip, "aesthetic_head": aesthetic_head,
                "device": device}
    paths = _mp4s(videos, num_videos)
    scores, per_video, skipped = score_videos(paths, _scorers(chosen, settings))
    report = {"scores": scores, "videos": per_video, "skipped": skipped, "source": videos,
              "num_videos": len(per_video), **settings,
              "definitions": "VBench (github.com/Vchitect/VBench), reimplemented offline by lvdm",
              "motion_smoothness_interpolator": "mean of the neighbouring frames (VBench: AMT-S)"}
    write_result(report, out)
    print(_table(scores, len(per_video), len(skipped)))
    return report
