"""The module hands the denoiser the micro-conditions it declares: from the batch in training and
from the request at sampling; images get fps 120 (Open-Sora's IMG_FPS); resolution and aspect
ratio are the pixel size, not latent x 8."""

import pytest
import torch

from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.contract import IMAGE_FPS
from lvdm.models.dit import DiT
from lvdm.models.stdit import STDiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder


def _module(denoiser=None, **kw) -> LatentDiffusionModule:
    torch.manual_seed(0)
    denoiser = denoiser or STDiT(in_channels=3, hidden_size=24, depth=1, num_heads=2, context_dim=16, context_length=4,
                                 temporal="blocks", size_conditioning=True, fps_conditioning=True)
    return LatentDiffusionModule(denoiser, WordTextEncoder(dim=16, max_length=4), RectifiedFlow(num_sampling_steps=2),
                                 sample_shape=(4, 12, 20), fps=kw.pop("fps", 8.0), **kw).eval()


def _spy(module) -> list[dict]:
    """Every call's micro-condition keywords, as the denoiser receives them."""
    calls = []

    def hook(model, args, kwargs):
        calls.append({k: v.clone() for k, v in kwargs.items() if k in model.micro_conditions})

    module.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def _batch(frames: int, **extra) -> dict:
    return {"video": torch.rand(2, 3, frames, 12, 20) * 2 - 1, "caption": ["a red square", "a blue circle"], **extra}


def test_training_passes_the_batch_fps_and_pixel_size():
    module = _module()
    calls = _spy(module)
    # 12 x 20 pixels (the pixel compressor: latent x 8 would say 96 x 160)
    module.diffusion_loss(_batch(4, fps=torch.tensor([30.0, IMAGE_FPS]), height=torch.tensor([12.0, 12.0]),
                                 width=torch.tensor([20.0, 20.0])))
    (got,) = calls
    torch.testing.assert_close(got["fps"], torch.tensor([30.0, IMAGE_FPS]))
    torch.testing.assert_close(got["resolution"], torch.tensor([[12.0, 20.0]] * 2))
    torch.testing.assert_close(got["aspect_ratio"], torch.tensor([0.6, 0.6]))


@pytest.mark.parametrize("frames, fps", [(1, IMAGE_FPS), (4, 8.0)])
def test_training_without_batch_conditions_derives_them(frames, fps):
    """A batch of bare videos: the size is the video's, an image has fps 120, a video the module's fps."""
    module = _module()
    calls = _spy(module)
    module.diffusion_loss(_batch(frames))
    torch.testing.assert_close(calls[0]["fps"], torch.full((2,), fps))
    torch.testing.assert_close(calls[0]["resolution"], torch.tensor([[12.0, 20.0]] * 2))


@pytest.mark.parametrize("frames, asked, fps", [(1, 30.0, IMAGE_FPS), (4, 30.0, 30.0), (4, None, 8.0)])
def test_sampling_derives_them_from_the_request(frames, asked, fps):
    module = _module()
    calls = _spy(module)
    module.generate(["a red square"], num_frames=frames, height=12, width=20, num_steps=2, fps=asked)
    assert len(calls) == 2
    for got in calls:  # guided: conditional and unconditional halves, one value each
        torch.testing.assert_close(got["fps"], torch.full((2,), fps))
        torch.testing.assert_close(got["resolution"], torch.tensor([[12.0, 20.0]] * 2))
        torch.testing.assert_close(got["aspect_ratio"], torch.full((2,), 0.6))


def test_extend_forwards_the_fps():
    module = _module()
    calls = _spy(module)
    module.extend(torch.zeros(1, 3, 2, 12, 20), ["a red square"], num_new_frames=2, num_frames=4, num_steps=1, fps=12)
    assert calls and all(torch.equal(c["fps"], torch.full((2,), 12.0)) for c in calls)


def test_the_conditions_change_the_prediction():
    """Companion: the model does see them (its fps embedder is zero at init, so perturb it)."""
    module = _module()
    with torch.no_grad():
        for p in module.denoiser.parameters():
            p.normal_(0, 0.2)
    a = module.generate(["a red square"], num_frames=4, height=12, width=20, num_steps=2, fps=30)
    b = module.generate(["a red square"], num_frames=4, height=12, width=20, num_steps=2, fps=10)
    assert (a - b).abs().max() > 1e-4


def test_a_backbone_gets_only_what_it_declares():
    dit = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=1, num_heads=2, conditioning="cross_attn",
              context_dim=16)
    module = _module(dit)
    calls = _spy(module)
    module.diffusion_loss(_batch(4, fps=torch.tensor([30.0, 30.0])))
    module.generate(["a red square"], num_frames=4, height=12, width=20, num_steps=1)
    assert calls and all(c == {} for c in calls)
