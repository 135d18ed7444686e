"""A pretrained (frozen) text encoder encodes without gradients, unless LoRA adapters were added
to it (the LoRA callback's ``text_encoder_targets``): then only they get gradients."""

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from lvdm.finetune.lora import apply_lora, is_adapter_key
from lvdm.text import CLIPTextEncoder


def test_clip_runs_with_gradients_only_through_its_adapter(tmp_path, clip_tokenizer):
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=16, pad_token_id=clip_tokenizer.pad_token_id,
                            bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id)
    CLIPTextModel(config).save_pretrained(tmp_path)
    clip_tokenizer.save_pretrained(tmp_path)
    encoder = CLIPTextEncoder(pretrained=str(tmp_path), max_length=8)
    captions = ["a cat sits on the mat", "the dog runs"]
    tokens, _ = encoder(captions)
    assert not tokens.requires_grad  # frozen: no graph is kept

    names = apply_lora(encoder, rank=2, targets="*.self_attn.*_proj")
    assert len(names) == 8  # q, k, v, out in 2 layers
    with torch.no_grad():  # B is zero: give the adapter an update
        for name, param in encoder.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.1)
    adapted, _ = encoder(captions)
    adapted.square().mean().backward()
    with_grad = {n for n, p in encoder.named_parameters() if p.grad is not None}
    assert with_grad and all(is_adapter_key(n) for n in with_grad)
    assert with_grad == {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert (adapted.detach() - tokens).abs().max() > 1e-3
    with torch.no_grad():
        assert not encoder(captions)[0].requires_grad  # sampling: still no graph
