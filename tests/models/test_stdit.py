"""STDiT behaviour beyond parity: per-frame timesteps, identity at init, bad input, checkpointing."""

import pytest
import torch

from lvdm.distributed.activation_checkpointing import apply_activation_checkpointing
from lvdm.models.stdit import STDiT

KW = dict(in_channels=3, hidden_size=24, depth=2, num_heads=2, context_dim=8, context_length=4, base_size=4)


def _random(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("temporal", ["none", "inline", "blocks"])
def test_per_frame_timesteps(temporal, assert_close_scaled):
    """A [B, T] timestep equal across frames is the [B] timestep; differing frames get their own."""
    torch.manual_seed(0)
    pos = {"none": "none", "inline": "sincos_branch", "blocks": "rope"}[temporal]
    model = _random(STDiT(**KW, temporal=temporal, temporal_position=pos, fps_conditioning=True))
    x, ctx = torch.randn(2, 3, 3, 4, 4), torch.randn(2, 4, 8)
    t = torch.tensor([5.0, 800.0])
    with torch.no_grad():
        per_sample = model(x, t, ctx)
        per_frame = model(x, t[:, None].expand(2, 3), ctx)
        assert_close_scaled(per_frame, per_sample)
        mixed = t[:, None].expand(2, 3).clone()
        mixed[:, 0] = 0.0  # e.g. a clean conditioning frame
        out = model(x, mixed, ctx)
    assert not torch.allclose(out[:, :, 0], per_sample[:, :, 0], atol=1e-4)
    if temporal == "none":  # frames independent: the other frames are unchanged
        assert_close_scaled(out[:, :, 1:], per_sample[:, :, 1:])
    with pytest.raises(ValueError, match=r"per-frame timesteps must be \[B, T\] = \[2, 3\]"):
        model(x, torch.zeros(2, 5), ctx)


def test_untrained_model_predicts_zero_and_uses_the_null_caption():
    model = STDiT(**KW, temporal="blocks").eval()
    x = torch.randn(1, 3, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([3.0])), torch.zeros_like(x))  # context=None: null caption
    with pytest.raises(ValueError, match="context_dim=8"):
        model(x, torch.tensor([3.0]), torch.randn(1, 4, 5))
    no_null = STDiT(**dict(KW, context_length=0))
    with pytest.raises(ValueError, match="no null caption"):
        no_null(x, torch.tensor([3.0]))


@pytest.mark.parametrize("bad", [dict(temporal="blocks", temporal_position="sincos_branch"),
                                 dict(temporal="none", temporal_position="rope"),
                                 dict(temporal="sideways"),
                                 dict(size_conditioning=True)])  # hidden 24 ok; 26 below is not
def test_option_errors(bad):
    kw = dict(KW, **bad)
    if bad.get("size_conditioning"):
        kw["hidden_size"], kw["num_heads"] = 26, 2
    with pytest.raises(ValueError):
        STDiT(**kw)


def test_activation_checkpointing_keeps_gradients(assert_close_scaled):
    torch.manual_seed(0)
    model = _random(STDiT(**KW, temporal="blocks")).train()
    x, ctx, t = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 4, 8), torch.tensor([3.0, 600.0])
    model(x, t, ctx).square().mean().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    blocks = apply_activation_checkpointing(model)
    assert len(blocks) == 4  # spatial and temporal blocks
    model(x, t, ctx).square().mean().backward()
    for n, p in model.named_parameters():
        assert_close_scaled(p.grad, want[n], msg=n)


def test_stdit3_position_scale_follows_the_pixel_resolution():
    """Open-Sora 1.2: positions i / (√(H·W)/512) · round(√(h·w)) / n per axis, [w | h] halves."""
    import math

    import numpy as np

    from lvdm.models.stdit import sincos_2d

    model = STDiT(**dict(KW, hidden_size=32), resolution_scale=512, latent_scale=8)
    x = torch.zeros(1, 3, 1, 6, 10)  # 48 × 80 px
    base, scale = model._position_scale(x, 6, 10, None)
    assert base == round(math.sqrt(60)) and math.isclose(scale, math.sqrt(48 * 80) / 512)
    assert model._position_scale(x, 6, 10, torch.tensor([[512.0, 512.0]])) == (8, 1.0)

    def code(d, p):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(p, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows = np.arange(6) / scale * base / 6
    cols = np.arange(10) / scale * base / 10
    hh, ww = np.meshgrid(rows, cols, indexing="ij")
    want = np.concatenate([code(16, ww.reshape(-1)), code(16, hh.reshape(-1))], axis=1)
    assert np.abs(sincos_2d(32, 6, 10, base, scale).numpy() - want).max() < 1e-5


@pytest.mark.parametrize("size", [(30, 53), (45, 80)], ids=["240p-9:16", "360p-9:16"])
def test_open_sora_odd_latent_sizes(size):
    """Open-Sora 1.2's own 240p and 360p 9:16 sizes give latents 30×53 and 45×80, not whole
    2×2 patches: padded to 15×27 / 23×40 patches and the prediction cropped back."""
    from lvdm.models.presets import preset

    model = _random(preset("opensora-v1.2-stdit3-xl2", in_channels=3, hidden_size=24, depth=1, num_heads=2,
                           context_dim=8, context_length=4))
    x = torch.randn(1, 3, 2, *size)
    pixels = torch.tensor([[240.0, 426.0]] if size[0] == 30 else [[360.0, 640.0]])
    with torch.no_grad():
        out = model(x, torch.tensor([500.0]), resolution=pixels)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_time_scale_divides_the_frame_positions():
    """Open-Sora 1.0's ``time_scale`` (2/3 in its 64×512² config): the temporal sin-cos code of
    frame i is that of position i / time_scale (``get_1d_sincos_pos_embed``), so it changes the
    output; 1 is the 16-frame configs' code."""
    import numpy as np

    kw = dict(KW, temporal="inline", temporal_position="sincos_branch")
    model = _random(STDiT(**kw))
    scaled = STDiT(**kw, time_scale=2 / 3)
    scaled.load_state_dict(model.state_dict())
    pos = np.arange(7)[:, None] / (2 / 3)
    omega = 1.0 / 10000 ** (np.arange(12, dtype=np.float64) / 12.0)
    want = np.concatenate([np.sin(pos * omega), np.cos(pos * omega)], axis=1)
    got = scaled.eval()._positions((7, 2, 2), torch.device("cpu")).temporal_sincos[0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)  # values in [-1, 1]
    x, ctx, t = torch.randn(1, 3, 7, 4, 4), torch.randn(1, 4, 8), torch.tensor([400.0])
    with torch.no_grad():
        assert not torch.allclose(scaled(x, t, ctx), model(x, t, ctx), rtol=1e-3)
    with pytest.raises(ValueError, match="time_scale must be > 0"):
        STDiT(**kw, time_scale=0)
