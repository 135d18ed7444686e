"""umT5 encoder: Wan 2.1 / 2.2's text encoder (umt5-xxl, 4096-wide tokens, 512 per caption)."""

from __future__ import annotations

import html
import re

import torch
from transformers import UMT5EncoderModel

from lvdm.text.base import PretrainedTextEncoder


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (its ``prompt_clean``, as ``WanPipeline`` applies it): HTML entities
    unescaped twice, runs of white space made one space, the ends stripped. (Wan also repairs
    mojibake with ``ftfy`` when it is installed; lvdm does not.)"""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


class UMT5TextEncoder(PretrainedTextEncoder):
    """Frozen ``transformers`` umT5 encoder, Wan's: captions cleaned as Wan cleans them, padded or
    cut to ``max_length`` tokens; the tokens are the last hidden state. The Wan backbone zeroes
    them past each caption's length (:class:`~lvdm.models.diffusers_adapter.WanBackbone`), as
    ``WanPipeline`` does.

    Args:
        pretrained: local folder or hub id, e.g. a Wan diffusers folder
            (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` with ``tokenizer`` / ``text_encoder`` subfolders).
            A local path that does not exist fails at once, naming it.
        max_length: tokens per caption (Wan: 512).
        dtype: weight dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        tokenizer_subfolder: folder of the tokenizer inside ``pretrained`` (None: ``pretrained``).
        encoder_subfolder: folder of the encoder inside ``pretrained`` (None: ``pretrained``).
    """

    def __init__(self, pretrained: str, max_length: int = 512, dtype: str = "float32",
                 tokenizer_subfolder: str | None = None, encoder_subfolder: str | None = None):
        super().__init__(UMT5EncoderModel, pretrained, max_length, dtype, tokenizer_subfolder, encoder_subfolder)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward([clean_prompt(c) for c in captions])
