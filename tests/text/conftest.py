"""Tiny tokenizers built offline: a WordLevel vocabulary over a few sentences."""

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SENTENCES = ["a cat sits on the mat", "the dog runs in a park", "a red car drives fast at night"]


def build_tokenizer(specials: list[str], template: str, **special_names: str) -> PreTrainedTokenizerFast:
    """Trains a WordLevel tokenizer on SENTENCES; ``template`` is the single-sequence template."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=special_names["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    used = [t for t in specials if t in template]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tokenizer.token_to_id(t)) for t in used]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special_names)


@pytest.fixture(scope="session")
def t5_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(
        ["<pad>", "</s>", "<unk>"], "$A </s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def clip_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(
        ["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>"],
        "<|startoftext|> $A <|endoftext|>",
        pad_token="<pad>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
    )
