import pytest
import torch
from transformers import T5Config, T5EncoderModel

from lvdm.text import T5TextEncoder

CAPTIONS = ["a cat sits on the mat", "", "the dog runs in a park at night fast"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory, t5_tokenizer):
    path = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    config = T5Config(
        d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=64, vocab_size=len(t5_tokenizer),
        pad_token_id=t5_tokenizer.pad_token_id, eos_token_id=t5_tokenizer.eos_token_id,
        decoder_start_token_id=t5_tokenizer.pad_token_id,
    )
    T5EncoderModel(config).save_pretrained(path)
    t5_tokenizer.save_pretrained(path)
    return path


def test_t5_matches_transformers(t5_dir, t5_tokenizer):
    encoder = T5TextEncoder(pretrained=str(t5_dir), max_length=8)
    tokens, mask = encoder(CAPTIONS)
    assert encoder.dim == 32 and encoder.max_length == 8
    assert tokens.shape == (3, 8, 32) and mask.shape == (3, 8) and mask.dtype == torch.bool

    batch = t5_tokenizer(CAPTIONS, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert mask[1].sum() == 1  # "" is one real token (</s>): the unconditional input
    assert mask[2].all()  # truncated
    reference = T5EncoderModel.from_pretrained(t5_dir).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
    torch.testing.assert_close(tokens, expected)


def test_t5_frozen(t5_dir):
    encoder = T5TextEncoder(pretrained=str(t5_dir), max_length=4)
    assert not encoder.trainable
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training
    tokens, _ = encoder(["a cat"])
    assert not tokens.requires_grad


def test_t5_subfolders_and_dtype(tmp_path, t5_dir, t5_tokenizer):
    T5EncoderModel.from_pretrained(t5_dir).save_pretrained(tmp_path / "text_encoder")
    t5_tokenizer.save_pretrained(tmp_path / "tokenizer")
    encoder = T5TextEncoder(
        pretrained=str(tmp_path), max_length=4, dtype="bfloat16",
        tokenizer_subfolder="tokenizer", encoder_subfolder="text_encoder",
    )
    tokens, mask = encoder(["a dog"])
    assert tokens.dtype == torch.bfloat16 and mask.tolist() == [[True, True, True, False]]


def test_t5_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_t5"):
        T5TextEncoder(pretrained=str(tmp_path / "missing_t5"))
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        T5TextEncoder(pretrained=str(tmp_path), encoder_subfolder="text_encoder")
    with pytest.raises(ValueError, match="dtype"):
        T5TextEncoder(pretrained=str(tmp_path), dtype="float64")
