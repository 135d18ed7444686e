import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from lvdm.text import CLIPTextEncoder

CAPTIONS = ["a red car drives fast", "", "a cat sits on the mat in the park at night"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, clip_tokenizer):
    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, pad_token_id=clip_tokenizer.pad_token_id,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
    )
    CLIPTextModel(config).save_pretrained(path)
    clip_tokenizer.save_pretrained(path)
    return path


def test_clip_matches_transformers(clip_dir, clip_tokenizer):
    encoder = CLIPTextEncoder(pretrained=str(clip_dir), max_length=10)
    tokens, mask = encoder(CAPTIONS)
    assert encoder.dim == 32 and tokens.shape == (3, 10, 32)

    batch = clip_tokenizer(CAPTIONS, padding="max_length", max_length=10, truncation=True, return_tensors="pt")
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert mask[1].sum() == 2  # "" → start + end tokens
    reference = CLIPTextModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
    torch.testing.assert_close(tokens, expected)


def test_clip_frozen_and_length_checked(clip_dir):
    encoder = CLIPTextEncoder(pretrained=str(clip_dir), max_length=4)
    assert not encoder.trainable and not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.model.training
    with pytest.raises(ValueError, match="16 positions"):
        CLIPTextEncoder(pretrained=str(clip_dir), max_length=77)


def test_clip_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_clip_here"):
        CLIPTextEncoder(pretrained=str(tmp_path / "no_clip_here"))
