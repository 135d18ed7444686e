"""Image DiT → tubelet video DiT: the inflated video model starts as the image model on still clips."""

import lightning as L
import pytest
import torch

from lvdm.training.callbacks.warm_start import InitFrom
from lvdm.checkpoints.init_from import load_weights
from lvdm.models.dit import DiT
from lvdm.models.inflate import inflate_in_time
from lvdm.training.module import LatentDiffusionModule
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
    report = load_weights(video, image.state_dict(), strict=True, inflate_time=True)
    assert sorted(report.inflated) == ["final_layer.linear.bias", "final_layer.linear.weight", "x_embedder.proj.weight"]
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
    with pytest.raises(KeyError, match="strict init_from"):
        load_weights(dit(4, conditioning="cross_attn"), dit(1, conditioning="adaln").state_dict(), strict=True,
                     inflate_time=True)
    wide = DiT(in_channels=3, patch_size=(1, 2, 2), hidden_size=64, depth=2, num_heads=2, context_dim=8, qk_norm=True)
    with pytest.raises(KeyError, match="x_embedder"):
        load_weights(dit(4, conditioning="adaln"), wide.state_dict(), strict=True, inflate_time=True)
    # only a DiT's patch embedding and output layer, and only from temporal patch 1, are inflated
    assert inflate_in_time("blocks.0.mlp.fc1.weight", torch.ones(4, 2), (8, 2)) is None
    assert inflate_in_time("x_embedder.proj.weight", torch.ones(8, 3, 2, 2, 2), (8, 3, 4, 2, 2)) is None


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

    def hand_off(source, **kw):
        callback = InitFrom(str(source), strict=True, module="", prefix="", inflate_time=True, **kw)
        callback.setup(trainer, video, "fit")
        return callback.report

    assert len(hand_off(path).inflated) == 3
    assert (video.text_encoder.state_dict()["embedding.weight"] == 0.5).all()
    assert torch.allclose(video.denoiser.x_embedder.proj.weight, torch.full_like(video.denoiser.x_embedder.proj.weight, 0.125))
    hand_off(path, weights="raw")
    torch.testing.assert_close(video.denoiser.blocks[0].mlp.fc1.weight, image.denoiser.blocks[0].mlp.fc1.weight)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        hand_off(tmp_path / "nope.ckpt")
