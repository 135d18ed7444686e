"""The learned null caption (the denoiser's ``null_context``: Open-Sora's / PixArt-α's
``y_embedding``) reaches the unconditional half of guidance on every guided path: ``generate``,
``extend`` (continuation, image-to-video), and the module's default from a preset."""

import pytest
import torch

from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.presets import from_name
from lvdm.models.stdit import STDiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder


def _module(**kw) -> LatentDiffusionModule:
    torch.manual_seed(0)
    dit = STDiT(in_channels=3, hidden_size=24, depth=1, num_heads=2, context_dim=16, context_length=4,
                temporal="blocks")
    return LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=4), RectifiedFlow(num_sampling_steps=1),
                                 sample_shape=(4, 8, 8), guidance_scale=3.0, **kw).eval()


def _unconditional_contexts(module) -> list[torch.Tensor]:
    """The text context of the unconditional half of every guided call."""
    seen = []

    def hook(model, args, kwargs):
        context = args[2] if len(args) > 2 else kwargs["context"]
        seen.append(context.chunk(2)[1].clone())

    module.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def _is_learned(module, contexts) -> bool:
    null = module.denoiser.null_context
    return bool(contexts) and all(torch.equal(c[:, : null.shape[0]], null.expand(len(c), -1, -1)) for c in contexts)


def _extend(module, **kw):
    return module.extend(torch.zeros(1, 3, 2, 8, 8), ["a red square"], num_new_frames=2, num_steps=1, **kw)


@pytest.mark.parametrize("path", ["generate", "extend", "image_to_video"])
def test_learned_null_caption_on_every_guided_path(path):
    module = _module()
    seen = _unconditional_contexts(module)
    if path == "generate":
        module.generate(["a red square"], num_steps=1, null_caption="learned_caption")
    elif path == "extend":
        _extend(module, null_caption="learned_caption")
    else:
        module.generate(["a red square"], num_steps=1, first_frames=torch.zeros(1, 3, 1, 8, 8),
                        null_caption="learned_caption")
    assert _is_learned(module, seen)


def test_empty_caption_is_the_default_and_not_the_learned_one():
    module = _module()
    seen = _unconditional_contexts(module)
    _extend(module)
    assert seen and not _is_learned(module, seen)


def test_module_default_and_preset_rule_reach_extend():
    module = _module(null_caption="learned_caption")
    seen = _unconditional_contexts(module)
    _extend(module)
    assert _is_learned(module, seen)

    module = _module()
    module.use_sampler_defaults(from_name("opensora-v1.2-stdit3-xl2").sampler)
    assert (module.null_caption, module.guidance_scale, module.fps) == ("learned_caption", 7.0, 24.0)
    seen = _unconditional_contexts(module)
    _extend(module)
    assert _is_learned(module, seen)


def test_bad_null_caption_is_refused():
    with pytest.raises(ValueError, match="null_caption must be empty_caption or learned_caption"):
        _module(null_caption="zeros")


def _unconditional_masks(module) -> list[torch.Tensor]:
    seen = []

    def hook(model, args, kwargs):
        mask = args[3] if len(args) > 3 else kwargs["context_mask"]
        seen.append(mask.chunk(2)[1].clone())

    module.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_learned_null_caption_sees_its_prompts_mask():
    """Open-Sora repeats the prompts' mask over the null rows (``STDiT3.encode_text``): the null
    row of a 2-word prompt sees the first 2 tokens of ``y_embedding``, not all of them (the
    cause of a 0.58 difference against Open-Sora 1.2's own sampler, scripts/opensora_parity.py)."""
    module = _module()
    masks = _unconditional_masks(module)
    _, prompt_mask = module.encode_text(["red square", "a big red square"])
    module.generate(["red square", "a big red square"], num_steps=1, null_caption="learned_caption")
    assert masks and all(torch.equal(m, prompt_mask.bool()) for m in masks)
    assert prompt_mask.sum(1).tolist() == [3, 4]  # BOS + words: the two rows really differ


def test_caption_dropout_uses_the_learned_null_under_the_captions_mask():
    module = _module(null_caption="learned_caption", caption_dropout=1.0).train()
    ctx, mask = module.text_condition({"caption": ["red square", "a big red square"]})
    null = module.denoiser.null_context
    assert torch.equal(ctx, null.expand(2, -1, -1))
    assert torch.equal(mask, module.encode_text(["red square", "a big red square"])[1].bool())
    module.caption_dropout = 0.0
    ctx, _ = module.text_condition({"caption": ["red square"]})
    assert torch.equal(ctx, module.encode_text(["red square"])[0])


def _is_encoding_of(module, text: str, contexts) -> bool:
    encoded = module.encode_text([text])[0]
    return bool(contexts) and all(torch.equal(c, encoded.expand(len(c), -1, -1)) for c in contexts)


@pytest.mark.parametrize("path", ["generate", "extend"])
def test_negative_prompt_is_the_unconditional_context(path):
    """Diffusers' pipelines and Wan's sampler: the negative prompt's text encoding takes the
    unconditional half of guidance, where the empty caption was."""
    module = _module()
    seen = _unconditional_contexts(module)
    if path == "generate":
        module.generate(["a red square", "a blue circle"], num_steps=1, negative_prompt="blurry static")
    else:
        _extend(module, negative_prompt="blurry static")
    assert _is_encoding_of(module, "blurry static", seen)
    assert not _is_encoding_of(module, "", seen)


def test_no_negative_prompt_samples_exactly_as_the_empty_caption():
    module = _module()
    with torch.no_grad():  # every weight random: a fresh zero-initialised output layer ignores the prompt
        for param in module.parameters():
            param.normal_(0.0, 0.3)
    seen = _unconditional_contexts(module)
    default = module.generate(["a red square"], num_steps=1)
    assert _is_encoding_of(module, "", seen)
    assert torch.equal(module.generate(["a red square"], num_steps=1, negative_prompt=""), default)
    assert not torch.equal(module.generate(["a red square"], num_steps=1, negative_prompt="blurry static"), default)


def test_preset_negative_prompt_is_the_default():
    wan = from_name("wan2.1-t2v-1.3b").sampler
    module = _module()
    module.use_sampler_defaults(wan)
    assert wan.negative_prompt and module.negative_prompt == wan.negative_prompt
    seen = _unconditional_contexts(module)
    module.generate(["a red square"], num_steps=1)
    assert _is_encoding_of(module, wan.negative_prompt, seen)
    seen.clear()
    module.generate(["a red square"], num_steps=1, negative_prompt="")  # "" turns it off
    assert _is_encoding_of(module, "", seen)
    module.use_sampler_defaults(from_name("opensora-v1.2-stdit3-xl2").sampler)  # a preset without one clears it
    assert module.negative_prompt is None


def test_negative_prompt_with_the_learned_null_caption_is_refused():
    module = _module(null_caption="learned_caption")
    with pytest.raises(ValueError, match=r"cannot be used with null_caption='learned_caption'"):
        module.generate(["a red square"], num_steps=1, negative_prompt="blurry")
    with pytest.raises(ValueError, match=r"cannot be used with null_caption='learned_caption'"):
        _module().generate(["a red square"], num_steps=1, negative_prompt="blurry", null_caption="learned_caption")
