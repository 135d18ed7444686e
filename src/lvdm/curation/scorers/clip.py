"""CLIP-based scorers: aesthetic (image embedding + linear head, LAION-style) and text-video match."""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from lvdm.curation.frames import Clip
from lvdm.curation.hub import LoadedPerWorker, locate_file, locate_model
from lvdm.curation.scorers.base import Scorer

__all__ = ["AestheticScorer", "ClipMatchScorer", "load_linear_head"]


def _state_dict(path: str) -> dict:
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"aesthetic head {path!r} holds a {type(state).__name__}, not a state dict")
    return state


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_linear_head(head: str, filename: Optional[str] = None):
    """A linear scoring head ``(weight [1, D], bias [1])`` as float64 numpy arrays.

    ``head`` is a ``.pth``/``.pt``/``.safetensors`` state dict (loaded with
    ``weights_only=True``), or a hub repo id with ``filename`` naming the file in it. The
    state dict is either one linear layer (``weight``, ``bias``: LAION's aesthetic predictor
    v1) or a stack of linear layers with no nonlinearity between them (LAION's "improved"
    predictor: ``layers.0``, ``layers.2``… with only dropout between), which is folded into
    the one linear map it computes. Layers are chained in the natural order of their names.
    A missing local file fails naming it without touching the hub (:func:`locate_file`).
    """
    state = _state_dict(locate_file(head, filename, "aesthetic head"))
    layers = sorted((name[: -len("weight")] for name, value in state.items()
                     if name.endswith("weight") and getattr(value, "ndim", 0) == 2), key=_natural)
    if not layers:
        raise ValueError(f"aesthetic head {head!r} has no linear layer weights (keys: {sorted(state)[:8]})")
    weight, bias = None, None
    for prefix in layers:
        w = state[prefix + "weight"].double().numpy()
        b = state[prefix + "bias"].double().numpy() if prefix + "bias" in state else np.zeros(w.shape[0])
        if weight is None:
            weight, bias = w, b
        elif w.shape[1] != weight.shape[0]:
            raise ValueError(f"aesthetic head {head!r}: layer {prefix!r} takes {w.shape[1]} inputs, "
                             f"the previous layer gives {weight.shape[0]}")
        else:
            weight, bias = w @ weight, w @ bias + b
    if weight.shape[0] != 1:
        raise ValueError(f"aesthetic head {head!r} outputs {weight.shape[0]} values, expected 1")
    return weight, bias


class _ClipScorer(LoadedPerWorker, Scorer):
    batchable = True

    def __init__(self, clip: str, num_frames: int, device: str, batch_size: int) -> None:
        self.clip = clip
        self.num_frames = num_frames
        self.device = device
        self.batch_size = batch_size

    def _build(self):
        from lvdm.metrics.clipscore import load_clip

        model, processor = load_clip(locate_model(self.clip, "CLIP model"))
        return model.to(self.device), processor

    def image_embeddings(self, frames: Sequence[np.ndarray]):
        """L2-normalised CLIP embeddings ``[N, D]`` (float64 numpy) of RGB frames."""
        import torch

        model, processor = self._load()
        out = []
        for start in range(0, len(frames), self.batch_size):
            inputs = processor(images=list(frames[start : start + self.batch_size]), return_tensors="pt")
            with torch.inference_mode():
                features = model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            out.append(torch.nn.functional.normalize(features.double(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def text_embeddings(self, texts: Sequence[str]):
        """L2-normalised CLIP embeddings ``[N, D]`` (float64 numpy) of texts (truncated to the
        model's context)."""
        import torch

        model, processor = self._load()
        out = []
        for start in range(0, len(texts), self.batch_size):
            inputs = processor(text=list(texts[start : start + self.batch_size]), return_tensors="pt",
                               padding=True, truncation=True)
            inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                features = model.get_text_features(**inputs)
            out.append(torch.nn.functional.normalize(features.double(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def _frame_embeddings(self, clips: Sequence[Clip]) -> list[np.ndarray]:
        """Per clip, the embeddings of its frames (one batched pass over all clips' frames)."""
        per_clip = [self.frames(clip) for clip in clips]
        flat = self.image_embeddings([f for frames in per_clip for f in frames])
        out, start = [], 0
        for frames in per_clip:
            out.append(flat[start : start + len(frames)])
            start += len(frames)
        return out


class AestheticScorer(_ClipScorer):
    """LAION-style aesthetic score: a linear head on the L2-normalised CLIP image embedding,
    averaged over the sampled frames (LAION's predictors output roughly 1-10).

    Writes ``aesthetic``.

    Args:
        clip: CLIP model folder (``save_pretrained``) or hub id; LAION's heads expect
            ``openai/clip-vit-large-patch14``.
        head: the head's state dict file (``.pth``/``.safetensors``) or a hub repo id.
        head_filename: the file within ``head`` when it is a hub repo.
        num_frames: evenly spaced frames scored per clip.
        device: ``cpu`` or ``cuda``…
        batch_size: frames per CLIP forward.
    """

    name = "aesthetic"
    fields = ("aesthetic",)

    def __init__(self, clip: str, head: str, head_filename: Optional[str] = None, num_frames: int = 3,
                 device: str = "cpu", batch_size: int = 32) -> None:
        super().__init__(clip, num_frames, device, batch_size)
        self.head = head
        self.head_filename = head_filename
        self._head = None

    def __getstate__(self):
        return {**super().__getstate__(), "_head": None}

    def load(self) -> None:
        """The head first: a missing local head file fails before CLIP is looked for."""
        if self._head is None:
            self._head = load_linear_head(self.head, self.head_filename)
        super().load()

    def score_batch(self, clips: Sequence[Clip]) -> list[dict]:
        self.load()
        weight, bias = self._head
        out = []
        for embeddings in self._frame_embeddings(clips):
            if embeddings.shape[1] != weight.shape[1]:
                raise ValueError(f"aesthetic head takes {weight.shape[1]}-d embeddings, CLIP {self.clip!r} "
                                 f"gives {embeddings.shape[1]}-d")
            out.append({"aesthetic": float((embeddings @ weight.T + bias).mean()) if len(embeddings) else None})
        return out


class ClipMatchScorer(_ClipScorer):
    """Text-video match: cosine similarity between the caption's CLIP text embedding and the
    mean of the sampled frames' (normalised) CLIP image embeddings, in [-1, 1]. ``100 *
    clip_match`` per frame is CLIPScore's scale.

    Writes ``clip_match`` (``None`` when the sample has no caption).

    Args:
        clip: CLIP model folder (``save_pretrained``) or hub id.
        num_frames: evenly spaced frames per clip.
        device: ``cpu`` or ``cuda``…
        batch_size: frames (or captions) per CLIP forward.
    """

    name = "clip_match"
    fields = ("clip_match",)

    def __init__(self, clip: str, num_frames: int = 3, device: str = "cpu", batch_size: int = 32) -> None:
        super().__init__(clip, num_frames, device, batch_size)

    def score_batch(self, clips: Sequence[Clip]) -> list[dict]:
        frames = self._frame_embeddings(clips)
        captioned = [i for i, clip in enumerate(clips) if clip.caption.strip() and len(frames[i])]
        texts = self.text_embeddings([clips[i].caption for i in captioned]) if captioned else None
        out = [{"clip_match": None} for _ in clips]
        for row, i in enumerate(captioned):
            video = frames[i].mean(0)
            video = video / max(np.linalg.norm(video), 1e-12)
            out[i] = {"clip_match": float(video @ texts[row])}
        return out
