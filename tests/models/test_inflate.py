"""Image DiT → tubelet video DiT: the inflated video model starts as the image model on still clips."""

import lightning as L
import pytest
import torch

from lvdm.callbacks.inflate import InflateFromImage
from lvdm.models.dit import DiT
from lvdm.models.inflate import inflate_image_state
from lvdm.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder


def dit(pt, **kw):
    torch.manual_seed(0)
    return DiT(in_channels=3, patch_size=(pt, 2, 2), hidden_size=32, depth=2, num_heads=2, context_dim=8,
               qk_norm=True, **kw).double()


@pytest.mark.parametrize("conditioning", ["adaln", "cross_attn"])
def test_inflated_video_model_is_the_image_model_on_still_clips(conditioning):
    image = dit(1, conditioning=conditioning)
    with torch.no_grad():
        for p in image.parameters():
            p.normal_(0.0, 0.2)
    video = dit(4, conditioning=conditioning)
    video.load_state_dict(inflate_image_state(image.state_dict(), video))
    g = torch.Generator().manual_seed(1)
    frame = torch.randn(2, 3, 1, 4, 6, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([100.0, 700.0], dtype=torch.float64)
    expected = image(frame, t, ctx).expand(-1, -1, 4, -1, -1)
    torch.testing.assert_close(video(frame.expand(-1, -1, 4, -1, -1), t, ctx), expected)
    # a moving clip is not a still one: the inflated model does see every frame
    moving = torch.randn(2, 3, 4, 4, 6, generator=g, dtype=torch.float64)
    assert not torch.allclose(video(moving, t, ctx), expected)


def test_inflate_refuses_other_architectures():
    with pytest.raises(ValueError, match="differ in their parameters"):
        inflate_image_state(dit(1, conditioning="adaln").state_dict(), dit(4, conditioning="cross_attn"))
    wide = DiT(in_channels=3, patch_size=(1, 2, 2), hidden_size=64, depth=2, num_heads=2, context_dim=8, qk_norm=True)
    with pytest.raises(ValueError, match="x_embedder"):
        inflate_image_state(wide.state_dict(), dit(4, conditioning="adaln"))


def test_callback_loads_ema_and_text_weights_from_a_checkpoint(tmp_path):
    def module(pt):
        torch.manual_seed(0)
        den = DiT(in_channels=3, patch_size=(pt, 2, 2), hidden_size=32, depth=2, num_heads=2, context_dim=8)
        return LatentDiffusionModule(den, WordTextEncoder(dim=8, max_length=4), sample_shape=(4, 8, 8))

    image = module(1)
    with torch.no_grad():
        for p in image.parameters():
            p.normal_()
    shadow = {n: torch.full_like(p, 0.5) for n, p in image.named_parameters()}
    path = tmp_path / "image.ckpt"
    torch.save({"state_dict": image.state_dict(), "callbacks": {"EMA": {"shadow": shadow, "num_updates": 3}}}, path)
    video = module(4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    InflateFromImage(str(path)).setup(trainer, video, "fit")
    assert (video.text_encoder.state_dict()["embedding.weight"] == 0.5).all()
    assert torch.allclose(video.denoiser.x_embedder.proj.weight, torch.full_like(video.denoiser.x_embedder.proj.weight, 0.125))
    InflateFromImage(str(path), use_ema=False).setup(trainer, video, "fit")
    torch.testing.assert_close(video.denoiser.blocks[0].mlp.fc1.weight, image.denoiser.blocks[0].mlp.fc1.weight)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        InflateFromImage(str(tmp_path / "nope.ckpt")).setup(trainer, video, "fit")
