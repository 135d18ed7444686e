"""A small randomly initialised T5 encoder with a word-level tokenizer, built offline and saved
to a folder that :class:`~lvdm.text.T5TextEncoder` loads: for tests, benchmarks and dry runs
of the real T5 code path without downloading a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

__all__ = ["build_tiny_t5"]


def build_tiny_t5(out: str | Path, sentences: Sequence[str], d_model: int = 32, num_layers: int = 2,
                  num_heads: int = 2, d_ff: int = 64, seed: int = 0) -> Path:
    """Train a lower-cased word-level tokenizer on ``sentences`` (plus ``<pad>``, ``</s>``,
    ``<unk>``; every caption ends in ``</s>`` like T5's), build a random ``T5EncoderModel`` of
    the given size seeded by ``seed``, and save both to ``out``. Returns ``out``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(list(sentences), trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                             special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_kv=d_model // num_heads,
                      d_ff=d_ff, vocab_size=len(fast), pad_token_id=fast.pad_token_id,
                      eos_token_id=fast.eos_token_id, decoder_start_token_id=fast.pad_token_id)
    out = Path(out)
    T5EncoderModel(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out
