"""Token encoder + CLIP's pooled caption: the two text inputs of MMDiT models (HunyuanVideo:
LLaVA-Llama tokens + CLIP-L pooled; Open-Sora 2.0: T5-XXL tokens + CLIP-L pooled)."""

from __future__ import annotations

from typing import Optional

import torch

from lvdm.text.base import TextEncoder
from lvdm.text.clip import CLIPTextEncoder


class PooledTextEncoder(TextEncoder):
    """The tokens of ``tokens`` and the pooled caption vector of ``pooled`` (CLIP's
    ``pooler_output``, :meth:`~lvdm.text.clip.CLIPTextEncoder.pooled`), which
    :class:`~lvdm.training.module.LatentDiffusionModule` hands a denoiser that declares the
    ``pooled_text`` micro-condition (the unconditional half of guidance gets the null caption's).

    Args:
        tokens: the token encoder (its ``dim`` and ``max_length`` are this encoder's).
        pooled: the CLIP encoder of the pooled vector.
    """

    def __init__(self, tokens: TextEncoder, pooled: CLIPTextEncoder):
        super().__init__(dim=tokens.dim, max_length=tokens.max_length)
        self.tokens, self.pooled = tokens, pooled

    @property
    def trainable(self) -> bool:
        return self.tokens.trainable

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens(captions)

    def pooled_text(self, captions: list[str]) -> Optional[torch.Tensor]:
        return self.pooled.pooled(captions)
