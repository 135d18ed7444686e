"""The text encoders of the published video presets (umT5 for Wan, LLaVA-Llama + CLIP-L pooled for
HunyuanVideo, T5-XXL + CLIP-L pooled for Open-Sora 2.0, T5 for LTX), tiny and random, built offline:
a missing local path fails at once naming it, the Llama template crop, and the pooled caption that
reaches an MMDiT under classifier-free guidance (the null half gets the null caption's vector).
Their parity with the diffusers pipelines: tests/test_pipeline_parity.py."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, T5Config, T5EncoderModel

from lvdm.models.presets import from_name
from lvdm.text import CLIPTextEncoder, LlamaPromptTextEncoder, PooledTextEncoder, T5TextEncoder, UMT5TextEncoder

CAPTIONS = ["a red car drives fast", "the dog runs in a park"]


@pytest.mark.parametrize("preset", ["wan2.1-t2v-1.3b", "hunyuanvideo", "opensora-2.0", "ltx-video-2b"])
def test_missing_local_path_fails_at_once_naming_it(tmp_path, preset):
    missing = str(tmp_path / "no" / "such" / "folder")
    with pytest.raises(FileNotFoundError, match=f"pretrained path '{missing}' does not exist"):
        from_name(preset).sampler.build_text_encoder(missing)


@pytest.mark.parametrize("cls", [UMT5TextEncoder, LlamaPromptTextEncoder, T5TextEncoder, CLIPTextEncoder])
def test_each_encoder_names_a_missing_path(tmp_path, cls):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cls(str(tmp_path / "gone"))


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_llama_template_crop_computed_as_diffusers_does(tmp_path, t5_tokenizer):
    """crop_start None: the template's token count less 2 ({} and its end token); the tokens are the
    third-from-last hidden state after the crop, the mask cut alike."""
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=len(t5_tokenizer), max_position_embeddings=64,
                                   pad_token_id=t5_tokenizer.pad_token_id)).eval()
    template = "describe the video : {} </s>"
    encoder = LlamaPromptTextEncoder(_save(model, t5_tokenizer, tmp_path), max_length=8, template=template,
                                     crop_start=None)
    assert encoder.crop_start == len(t5_tokenizer(template)["input_ids"]) - 2
    tokens, mask = encoder(CAPTIONS)
    batch = t5_tokenizer([template.format(c) for c in CAPTIONS], padding="max_length", truncation=True,
                         max_length=8 + encoder.crop_start, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch, output_hidden_states=True).hidden_states[-3][:, encoder.crop_start:]
    torch.testing.assert_close(tokens, expected)
    assert torch.equal(mask, batch["attention_mask"][:, encoder.crop_start:].bool()) and tokens.shape[1] == 8


def _opensora2_like(tmp_path, t5_tokenizer, clip_tokenizer):
    """A tiny module with Open-Sora 2.0's text: T5 tokens (unmasked MMDiT) + CLIP-L's pooled caption;
    the denoiser records the pooled_text it is given; also the CLIP model."""
    from lvdm.models.mmdit import MMDiT
    from lvdm.training.module import LatentDiffusionModule

    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=16, vocab_size=len(t5_tokenizer),
                                 pad_token_id=t5_tokenizer.pad_token_id, decoder_start_token_id=0))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tokenizer), hidden_size=6, intermediate_size=12,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                        pad_token_id=clip_tokenizer.pad_token_id, bos_token_id=clip_tokenizer.bos_token_id,
                                        eos_token_id=clip_tokenizer.eos_token_id)).eval()
    text = PooledTextEncoder(T5TextEncoder(_save(t5, t5_tokenizer, tmp_path / "t5"), max_length=6),
                             CLIPTextEncoder(_save(clip, clip_tokenizer, tmp_path / "clip"), max_length=16))
    denoiser = MMDiT(in_channels=3, hidden_size=24, num_heads=2, depth_double=1, depth_single=1, context_dim=8,
                     refiner_depth=0, text_mask=False, pooled_text_dim=6, guidance_embed=False, rope_axes_dims=(4, 4, 4))
    module = LatentDiffusionModule(denoiser, text, guidance_scale=7.5, sample_shape=(1, 8, 8)).eval()
    seen = []
    forward = denoiser.forward
    denoiser.forward = lambda *args, **kwargs: seen.append(kwargs.get("pooled_text")) or forward(*args, **kwargs)
    return module, seen, clip


def _clip_pooled(clip, clip_tokenizer, captions):
    batch = clip_tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        return clip(input_ids=batch["input_ids"]).pooler_output


def test_pooled_caption_reaches_the_mmdit_in_both_halves(tmp_path, t5_tokenizer, clip_tokenizer):
    """Under guidance the conditional half gets CLIP(prompt) and the unconditional CLIP(""), not zeros."""
    module, seen, clip = _opensora2_like(tmp_path, t5_tokenizer, clip_tokenizer)
    module.generate(CAPTIONS[:1], num_steps=1)
    expected = _clip_pooled(clip, clip_tokenizer, CAPTIONS[:1] + [""])
    assert seen[0] is not None and expected.abs().max() > 1e-3
    torch.testing.assert_close(seen[0], expected)


def test_training_sees_the_pooled_caption_after_dropout(tmp_path, t5_tokenizer, clip_tokenizer):
    """The training loss gives the denoiser CLIP's pooled captions; a dropped caption is pooled as ""."""
    module, seen, clip = _opensora2_like(tmp_path, t5_tokenizer, clip_tokenizer)
    module.train()
    batch = {"video": torch.rand(2, 3, 1, 8, 8) * 2 - 1, "caption": CAPTIONS}
    for dropout, captions in ((0.0, CAPTIONS), (1.0, ["", ""])):
        module.caption_dropout = dropout
        module.diffusion_loss(batch)
        torch.testing.assert_close(seen[-1], _clip_pooled(clip, clip_tokenizer, captions))
