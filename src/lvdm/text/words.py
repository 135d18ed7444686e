"""A file-free, trainable word-embedding text encoder: the offline default of the demos.

It needs no download and no tokenizer files, so a recipe runs on a fresh machine. Words are
hashed (zlib.crc32, stable across processes and Python versions, unlike ``hash``) into buckets,
and the embeddings are learned together with the DiT.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn

from lvdm.text.base import TextEncoder
from lvdm.utils import to_device_async

_WORD = re.compile(r"[^\W_]+")  # runs of letters/digits (Unicode-aware)


class WordTextEncoder(TextEncoder):
    """Hashed bag-of-words token embeddings, trained jointly with the denoiser.

    A caption becomes ``[BOS, w1, w2, ...]``: lowercased, split on anything that is not a
    letter or digit, each word hashed into ids ``1 .. vocab_size - 1``, BOS is id 0 (so the
    empty caption is one real token), truncated/padded to ``max_length``.

    Args:
        dim: width of the token embeddings (the DiT's ``context_dim``).
        vocab_size: number of embedding rows (BOS + ``vocab_size - 1`` hash buckets).
        max_length: tokens per caption, BOS included.
        positional: add a learned position embedding (word order matters).
    """

    def __init__(self, dim: int = 64, vocab_size: int = 4096, max_length: int = 16, positional: bool = True):
        super().__init__(dim=dim, max_length=max_length)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (BOS + at least one bucket), got {vocab_size}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, dim)
        # Unit-variance tokens, like the outputs of a pretrained encoder; positions start small
        # so that initially the word identity dominates.
        nn.init.normal_(self.embedding.weight, std=1.0)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02) if positional else None

    @property
    def trainable(self) -> bool:
        return True

    def token_ids(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (ids ``[B, max_length]`` long, bool mask ``[B, max_length]``) on CPU."""
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool)
        buckets = self.vocab_size - 1
        for row, caption in enumerate(captions):
            words = _WORD.findall(caption.lower())[: self.max_length - 1]
            tokens = [0] + [1 + zlib.crc32(w.encode("utf-8")) % buckets for w in words]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = True
        return ids, mask

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.token_ids(captions)
        device = self.embedding.weight.device
        ids, mask = to_device_async(ids, device), to_device_async(mask, device)
        tokens = self.embedding(ids)
        if self.position is not None:
            tokens = tokens + self.position
        return tokens, mask
