"""The text-encoder protocol the DiT consumes.

A :class:`TextEncoder` turns a batch of captions into token embeddings ``[B, L, dim]`` plus an
attention mask ``[B, L]`` (True = real token); ``dim`` is the DiT's ``context_dim``. Every
caption, the empty string included, yields at least one real token: the empty caption is the
unconditional input of classifier-free guidance, and attention over zero keys is undefined.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

from lvdm.utils import parse_dtype, resolve_pretrained, to_device_async


def adapter_grad(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a frozen encoder's ``method`` without gradients, unless LoRA adapters added trainable
    parameters to the encoder (the LoRA callback's ``text_encoder_targets``): then with them."""

    @functools.wraps(method)
    def run(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            return method(self, *args, **kwargs)

    return run


class TextEncoder(nn.Module, ABC):
    """Base class of every text encoder.

    Attributes:
        dim: width of the token embeddings (the DiT's ``context_dim``).
        max_length: tokens per caption after padding/truncation (``L``).
    """

    def __init__(self, dim: int, max_length: int):
        super().__init__()
        if max_length < 1:
            raise ValueError(f"{type(self).__name__}.max_length must be >= 1, got {max_length}")
        if dim < 1:
            raise ValueError(f"{type(self).__name__}.dim must be >= 1, got {dim}")
        self.dim = dim
        self.max_length = max_length

    @property
    @abstractmethod
    def trainable(self) -> bool:
        """Whether the encoder is trained with the DiT (its parameters go to the optimizer)."""

    def train(self, mode: bool = True) -> "TextEncoder":
        # A frozen encoder stays in eval mode whatever Lightning asks of the LightningModule.
        return super().train(mode and self.trainable)

    @abstractmethod
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (embeddings ``[B, L, dim]``, bool mask ``[B, L]``, True = real token)."""

    def pooled_text(self, captions: list[str]) -> Optional[torch.Tensor]:
        """Captions → one vector each ``[B, pooled_dim]`` (CLIP's pooled caption, the ``pooled_text``
        micro-condition of MMDiT models), or None: this encoder has none
        (:class:`~lvdm.text.pooled.PooledTextEncoder` has one)."""
        return None


class PretrainedTextEncoder(TextEncoder):
    """A frozen Hugging Face tokenizer + text model whose last hidden state are the tokens.

    Subclasses name the ``transformers`` model class and document their defaults; loading,
    freezing and encoding live here. See :class:`~lvdm.text.T5TextEncoder` for the arguments.
    It encodes without gradients; only LoRA adapters added to it (the LoRA callback's
    ``text_encoder_targets``) make it run with them, and they alone train.
    """

    def __init__(
        self,
        model_class: type[PreTrainedModel],
        pretrained: str,
        max_length: int,
        dtype: str,
        tokenizer_subfolder: str | None,
        encoder_subfolder: str | None,
    ):
        tokenizer_location = resolve_pretrained(pretrained, tokenizer_subfolder)
        model_location = resolve_pretrained(pretrained, encoder_subfolder)
        model = model_class.from_pretrained(model_location, subfolder=encoder_subfolder or "", dtype=parse_dtype(dtype))
        positions = getattr(model.config, "max_position_embeddings", None)  # CLIP has 77; T5 is relative
        if positions is not None and max_length > positions:
            raise ValueError(f"max_length={max_length} exceeds the {model_class.__name__}'s {positions} positions")
        super().__init__(dim=model.config.hidden_size, max_length=max_length)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_location, subfolder=tokenizer_subfolder or "")
        self.model = model
        self.attend_padding = False  # True: the model reads the padding too (LTXPipeline's T5), the mask is still returned
        self.requires_grad_(False)
        self.eval()

    @property
    def trainable(self) -> bool:
        return False

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (``input_ids``, bool mask), padded/truncated to ``max_length``.

        T5 and CLIP tokenizers add an end (and CLIP a start) token, so "" already has one real
        token; for a tokenizer that adds none, the first (pad) position of an empty caption is
        marked real so the contract holds.
        """
        batch = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        mask = batch["attention_mask"].bool()
        mask[:, 0] |= ~mask.any(dim=1)
        return batch["input_ids"], mask

    @adapter_grad
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(captions)
        device = self.model.device
        ids, mask = to_device_async(ids, device), to_device_async(mask, device)
        hidden = self.model(input_ids=ids, attention_mask=None if self.attend_padding else mask.long()).last_hidden_state
        return hidden, mask
