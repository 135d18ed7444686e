"""CLIPScore for videos: torchmetrics' ``CLIPScore`` averaged over the frames of each video.

A video's score is the mean over its frames of ``100 * cos(CLIP(frame), CLIP(prompt))``; the
metric is the mean over videos, clamped at 0 as torchmetrics does. Frames go to the CLIP
processor as uint8-valued [0, 255] images, which it resizes (shorter side), centre-crops and
normalises exactly as the CLIP model expects; a one-frame video therefore scores exactly
what torchmetrics' ``CLIPScore`` gives the image.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
from torch import nn
from torchmetrics.functional.multimodal.clip_score import _clip_score_update
from torchmetrics.multimodal.clip_score import CLIPScore

from lvdm.utils import resolve_pretrained

__all__ = ["ClipFeatures", "VideoCLIPScore", "load_clip", "videos_to_frames"]


class ClipFeatures(nn.Module):
    """A CLIP-style model whose ``get_image_features`` / ``get_text_features`` return the
    projected embedding tensors.

    transformers >= 5 returns a model output (embedding in ``pooler_output``) from these
    methods, while torchmetrics' CLIPScore (<= 1.9) divides the result by its norm directly;
    this adapter bridges the two and passes tensors through unchanged on older transformers.

    Args:
        model: a ``transformers`` CLIP-style model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(output: Any) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Projected image embeddings ``[N, D]``."""
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Projected text embeddings ``[N, D]``."""
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(pretrained: str) -> tuple[ClipFeatures, Any]:
    """``(model, processor)`` of a CLIP from a local folder (offline) or a hub id, with
    ``transformers``' ``AutoModel`` / ``AutoProcessor``; the model is in eval mode, wrapped in
    :class:`ClipFeatures` for torchmetrics.

    Raises:
        FileNotFoundError: ``pretrained`` looks like a local path that does not exist.
    """
    from transformers import AutoModel, AutoProcessor

    location = resolve_pretrained(pretrained)
    model = AutoModel.from_pretrained(location).eval()
    processor = AutoProcessor.from_pretrained(location)
    if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
        raise TypeError(f"{pretrained!r} loads a {type(model).__name__}, which is not a CLIP-style model")
    return ClipFeatures(model).eval(), processor


def videos_to_frames(videos: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` float in [-1, 1] (or uint8) → ``[B * T, 3, H, W]`` uint8 frames
    (rounded as when the videos are written to mp4).

    Raises:
        ValueError: wrong shape or a float range outside [-1, 1].
    """
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"CLIPScore expects videos [B, 3, T, H, W]; got shape {tuple(videos.shape)}")
    if videos.is_floating_point():
        lo, hi = videos.min().item(), videos.max().item()
        if lo < -1.001 or hi > 1.001:
            raise ValueError(
                f"CLIPScore expects float videos in [-1, 1] (or uint8 in [0, 255]); got values in [{lo:.4g}, {hi:.4g}]"
            )
        videos = ((videos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    elif videos.dtype != torch.uint8:
        raise ValueError(f"CLIPScore expects float videos in [-1, 1] or uint8; got dtype {videos.dtype}")
    return videos.permute(0, 2, 1, 3, 4).flatten(0, 1)


class VideoCLIPScore(CLIPScore):
    """Mean over frames of torchmetrics' CLIPScore between each video and its prompt.

    Args:
        pretrained: local folder with a CLIP model and its processor (``save_pretrained``
            output), or a hub id such as ``"openai/clip-vit-base-patch16"``.
        **kwargs: torchmetrics ``Metric`` options.
    """

    def __init__(self, pretrained: str = "openai/clip-vit-base-patch16", **kwargs: Any) -> None:
        super().__init__(model_name_or_path=partial(load_clip, pretrained), **kwargs)
        self.pretrained = pretrained

    def update(self, videos: torch.Tensor, prompts: Sequence[str]) -> None:  # type: ignore[override]
        """Add videos ``[B, 3, T, H, W]`` (float in [-1, 1] or uint8) and their ``B`` prompts."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) != videos.shape[0]:
            raise ValueError(f"got {videos.shape[0]} videos but {len(prompts)} prompts")
        num_frames = videos.shape[2]
        frames = videos_to_frames(videos)
        texts = [prompt for prompt in prompts for _ in range(num_frames)]
        with torch.no_grad():
            score, _ = _clip_score_update(list(frames), texts, self.model, self.processor)
        per_video = score.view(len(prompts), num_frames).mean(dim=1)
        self.score += per_video.sum().to(self.score)
        self.n_samples += len(prompts)
