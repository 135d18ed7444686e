"""UMT5TextEncoder (Wan 2.1's umT5): a tiny random umT5 folder loads with its per-layer relative
position bias and encodes as transformers' UMT5EncoderModel does; T5's encoder class would not
load those weights (the bias of every layer past the first would be left at random)."""

import torch
from transformers import T5EncoderModel, UMT5Config, UMT5EncoderModel

from lvdm.text import UMT5TextEncoder

CAPTIONS = ["a cat sits on the mat", "", "the dog runs in a park at night fast"]


def test_umt5_matches_transformers_and_keeps_every_layers_position_bias(tmp_path, t5_tokenizer):
    torch.manual_seed(0)
    config = UMT5Config(d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=64, vocab_size=len(t5_tokenizer),
                        pad_token_id=t5_tokenizer.pad_token_id, eos_token_id=t5_tokenizer.eos_token_id,
                        decoder_start_token_id=t5_tokenizer.pad_token_id)
    UMT5EncoderModel(config).save_pretrained(tmp_path)
    t5_tokenizer.save_pretrained(tmp_path)
    encoder = UMT5TextEncoder(str(tmp_path), max_length=8)
    tokens, mask = encoder(CAPTIONS)
    assert tokens.shape == (3, 8, 32) and encoder.dim == 32 and not encoder.trainable
    batch = t5_tokenizer(CAPTIONS, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    assert torch.equal(mask, batch["attention_mask"].bool())
    reference = UMT5EncoderModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        wrong = T5EncoderModel.from_pretrained(tmp_path).eval()(**batch).last_hidden_state
    torch.testing.assert_close(tokens, expected)
    assert not torch.allclose(wrong, expected)  # what T5TextEncoder's class would give
