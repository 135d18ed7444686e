"""CLIP text encoder (Stable Diffusion-style conditioning, 77 tokens per caption)."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel

from lvdm.text.base import PretrainedTextEncoder, adapter_grad


class CLIPTextEncoder(PretrainedTextEncoder):
    """Frozen ``transformers`` CLIP text model; the tokens are its last hidden state.

    Args:
        pretrained: local folder holding the tokenizer and the ``CLIPTextModel``, or a hub id
            such as ``"openai/clip-vit-large-patch14"``.
        max_length: tokens per caption (padded/truncated; at most the model's 77 positions).
        dtype: weight dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        tokenizer_subfolder: folder of the tokenizer inside ``pretrained``; ``None`` for
            ``pretrained`` itself.
        encoder_subfolder: folder of the text model inside ``pretrained``; ``None`` for
            ``pretrained`` itself.
    """

    def __init__(
        self,
        pretrained: str,
        max_length: int = 77,
        dtype: str = "float32",
        tokenizer_subfolder: str | None = None,
        encoder_subfolder: str | None = None,
    ):
        super().__init__(CLIPTextModel, pretrained, max_length, dtype, tokenizer_subfolder, encoder_subfolder)

    @adapter_grad
    def pooled(self, captions: list[str]) -> torch.Tensor:
        """The pooled caption vectors ``[B, hidden]`` (``pooler_output``: the end token's final
        state), of captions padded or cut to ``max_length``, read without an attention mask as
        HunyuanVideo's and Open-Sora 2.0's samplers read them (CLIP is causal: padding after the
        end token changes nothing)."""
        ids, _ = self.tokenize(captions)
        return self.model(input_ids=ids.to(self.model.device)).pooler_output
