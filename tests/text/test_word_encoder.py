import zlib

import torch

from lvdm.text import WordTextEncoder


def test_ids_deterministic_and_tokenised_as_documented():
    a, b = WordTextEncoder(vocab_size=100, max_length=6), WordTextEncoder(vocab_size=100, max_length=6)
    captions = ["A cat, on the MAT!", "", "one two three four five six seven"]
    ids_a, mask_a = a.token_ids(captions)
    ids_b, mask_b = b.token_ids(captions)
    assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
    assert mask_a.sum(1).tolist() == [6, 1, 6]  # BOS + words; "" → BOS only; truncated to 6
    assert (ids_a[:, 0] == 0).all() and ids_a[mask_a][ids_a[mask_a] != 0].min() >= 1
    assert ids_a.max() < 100
    assert ids_a[0, 5] == a.token_ids(["mat"])[0][0, 1]  # case and punctuation do not matter


def test_ids_are_crc32_buckets():
    # crc32 (unlike Python's salted hash) gives the same ids in every process and version.
    ids, _ = WordTextEncoder(vocab_size=4096).token_ids(["hello world"])
    assert ids[0, :3].tolist() == [0, 1 + zlib.crc32(b"hello") % 4095, 1 + zlib.crc32(b"world") % 4095]


def test_forward_same_seed_and_gradients():
    torch.manual_seed(0)
    a = WordTextEncoder(dim=8, vocab_size=50, max_length=4)
    torch.manual_seed(0)
    b = WordTextEncoder(dim=8, vocab_size=50, max_length=4, positional=True)
    tokens, mask = a(["a dog", ""])
    torch.testing.assert_close(tokens, b(["a dog", ""])[0])
    assert tokens.shape == (2, 4, 8) and mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert a.trainable
    a.train()
    assert a.training
    (tokens * mask[..., None]).sum().backward()
    assert a.embedding.weight.grad is not None and a.embedding.weight.grad.abs().sum() > 0
    assert a.position.grad is not None


def test_without_positions():
    encoder = WordTextEncoder(dim=4, vocab_size=10, max_length=3, positional=False)
    assert encoder.position is None
    tokens, _ = encoder(["x"])
    torch.testing.assert_close(tokens[0, 0], encoder.embedding.weight[0])
