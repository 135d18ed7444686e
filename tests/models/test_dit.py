import itertools
import json
from pathlib import Path

import pytest
import torch

from lvdm.models.dit import DiT, parse_size
from lvdm.models.stdit import STDiTBlock
from lvdm.ops.attention import attention, use_backend

VARIANTS = list(itertools.product(["adaln", "cross_attn", "in_context"], ["full", "spatial_temporal"]))
# adaLN-single (one shared modulation linear, per-block tables): the modulated conditionings
SINGLE = list(itertools.product(["adaln", "cross_attn"], ["full", "spatial_temporal"]))


def tiny(conditioning="adaln", layout="full", **kw):
    args = dict(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=2, num_heads=4,
                conditioning=conditioning, layout=layout, context_dim=16)
    args.update(kw)
    return DiT(**args)


def inputs(b=2, t=4, h=16, w=16, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, t, h, w, generator=g)
    ctx = torch.randn(b, length, 16, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False  # first caption has padding
    return x, torch.rand(b, generator=g) * 1000, ctx, mask


def test_dit_xl2_has_the_paper_parameter_count():
    # DiT paper, Table 1 / Fig. 2: DiT-XL/2 for 256x256 images (latent 32x32x4), class-
    # conditional with learned sigma: 675M parameters.
    with torch.device("meta"):
        model = DiT(size="XL/2", in_channels=4, out_channels=8, num_classes=1000)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 675e6) / 675e6 < 0.01, count
    assert model.patch_size == (1, 2, 2) and model.hidden_size == 1152 and len(model.blocks) == 28


def test_size_presets():
    assert parse_size("S/4") == (12, 384, 6, 4)
    with pytest.raises(ValueError, match="unknown DiT size"):
        parse_size("M/2")


@pytest.mark.parametrize("conditioning,layout,single", [(*v, False) for v in VARIANTS] + [(*v, True) for v in SINGLE])
def test_every_block_starts_as_identity(conditioning, layout, single):
    torch.manual_seed(0)
    model = tiny(conditioning, layout, adaln_single=single)
    b, d, grid = 2, model.hidden_size, (2, 4, 4)
    n = grid[0] * grid[1] * grid[2]
    c = torch.randn(b, d)
    if single:  # blocks see the shared t_block's output (zero at init), which must not be what
        c = model.t_block(c)  # makes them the identity on its own: see the companion checks
    ctx = torch.randn(b, 5, d)
    ctx_mask = torch.ones(b, 5, dtype=torch.bool)
    num_prefix = 6 if conditioning == "in_context" else 0
    prefix_mask = torch.ones(b, num_prefix, dtype=torch.bool) if num_prefix else None
    if layout == "full":
        x = torch.randn(b, num_prefix + n, d)
        mask = torch.cat([prefix_mask, torch.ones(b, n, dtype=torch.bool)], 1) if num_prefix else None
        run = lambda block, c: block(x, c, grid, ctx, ctx_mask, num_prefix, mask)  # noqa: E731
    else:  # SpatialTemporalBlock: [B, T, P + S, D] tokens, modulations per sample [B, 1, ...]
        x = torch.randn(b, grid[0], num_prefix + grid[1] * grid[2], d)
        run = lambda block, c: block(x, _st_mods(c, d), ctx, ctx_mask, prefix_mask=prefix_mask)  # noqa: E731
    for block in model.blocks:
        torch.testing.assert_close(run(block, None if conditioning == "in_context" else c), x, rtol=0, atol=0)
        # ...and the check can fail: once trained weights move off zero, the block acts.
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.1 * torch.randn_like(p))
        assert (run(block, None if conditioning == "in_context" else c) - x).abs().max() > 1e-3
    if single:
        # each of the two zero inits is needed: with the tables' gate rows zero, a trained
        # (non-zero) t_block alone makes the blocks act, and so do non-zero gate rows alone
        fresh = tiny(conditioning, layout, adaln_single=True)
        with torch.no_grad():
            fresh.t_block[-1].weight.normal_(0, 0.1)
        c_trained = fresh.t_block(torch.randn(b, d))
        for block in fresh.blocks:
            assert (run(block, c_trained) - x).abs().max() > 1e-3
            torch.testing.assert_close(run(block, torch.zeros_like(c_trained)), x, rtol=0, atol=0)
            with torch.no_grad():
                block.scale_shift_table[2::3].normal_(0, 0.1)
            assert (run(block, torch.zeros_like(c_trained)) - x).abs().max() > 1e-3


def _st_mods(c, d):
    """A spatial-temporal block's modulation input from a per-sample ``c`` ``[B, D]`` (adaLN)
    or shared ``t_block`` output ``[B, 9·D]`` (adaLN-single)."""
    if c is None:
        return None
    return c[:, None] if c.shape[-1] == d else c.view(c.shape[0], 1, -1, d)


def test_adaln_single_shares_one_modulation_linear():
    single = tiny("cross_attn", "spatial_temporal", adaln_single=True)
    per_block = tiny("cross_attn", "spatial_temporal")
    keys = set(single.state_dict())
    assert "t_block.1.weight" in keys and not any("adaLN_modulation" in k for k in keys)
    assert single.blocks[0].scale_shift_table.shape == (9, 32)  # (shift, scale, gate) × 3 branches
    assert single.final_layer.scale_shift_table.shape == (2, 32)
    # per-block adaLN: depth × (D·9D + 9D) + final (D·2D + 2D); adaLN-single: one D·9D + 9D,
    # tables depth × 9D + 2D
    d, depth = 32, 2
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    expected = depth * (9 * d * d + 9 * d) + (2 * d * d + 2 * d) - (9 * d * d + 9 * d) - depth * 9 * d - 2 * d
    assert count(per_block) - count(single) == expected
    # the default keeps every existing checkpoint loadable: same keys as before adaln_single
    assert all("scale_shift_table" not in k and "t_block" not in k for k in per_block.state_dict())
    with pytest.raises(ValueError, match="adaln_single=True needs conditioning"):
        tiny("in_context", "full", adaln_single=True)


def test_stdit_xl2_with_adaln_single_has_open_sora_size():
    """Open-Sora 1.0's STDiT-XL/2 is published as "724M" (Open-Sora 1.0 release notes); counted from its code it
    has ~759.6e6 parameters, i.e. 724 × 2**20. lvdm's STDiT-XL/2 with adaLN-single has ~764e6
    (its temporal attention has its own modulation triple: 3 more rows in t_block)."""
    kw = dict(size="XL/2", layout="spatial_temporal", conditioning="cross_attn", context_dim=4096,
              in_channels=4, out_channels=8)
    with torch.device("meta"):
        single = DiT(**kw, adaln_single=True)
        per_block = DiT(**kw)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.75e9 < count(single) < 0.78e9, count(single)
    assert 1.08e9 < count(per_block) < 1.10e9, count(per_block)


@pytest.mark.parametrize("conditioning,layout,single", [(*v, False) for v in VARIANTS] + [(*v, True) for v in SINGLE])
def test_untrained_model_predicts_zero_with_right_shape(conditioning, layout, single):
    model = tiny(conditioning, layout, adaln_single=single)
    x, t, ctx, mask = inputs()
    out = model(x, t, ctx, mask)
    assert out.shape == x.shape
    assert out.abs().max() == 0


@pytest.mark.parametrize("conditioning,layout,single", [(*v, False) for v in VARIANTS] + [("cross_attn", "full", True)])
def test_each_variant_learns_a_tiny_batch(conditioning, layout, single):
    torch.manual_seed(0)
    model = tiny(conditioning, layout, adaln_single=single)
    x, t, ctx, mask = inputs(b=4)
    target = torch.randn_like(x) * 0.5 + x.mean(dim=(2, 3, 4), keepdim=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (model(x, t, ctx, mask) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("conditioning,layout", VARIANTS)
def test_padded_caption_tokens_are_ignored(conditioning, layout):
    torch.manual_seed(0)
    model = tiny(conditioning, layout)
    with torch.no_grad():  # leave the identity init so the conditioning matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, ctx, mask = inputs()
    out = model(x, t, ctx, mask)
    ctx2 = ctx.clone()
    ctx2[0, 3:] = 100.0  # change only masked-out tokens of caption 0
    torch.testing.assert_close(model(x, t, ctx2, mask), out)
    ctx2[0, 0] = 5.0  # a real token does matter
    assert not torch.allclose(model(x, t, ctx2, mask)[0], out[0])


@pytest.mark.parametrize("layout", ["full", "spatial_temporal"])
def test_any_grid_at_run_time(layout):
    model = tiny("cross_attn", layout)
    for t, h, w in [(2, 8, 8), (6, 12, 20), (4, 32, 16)]:
        x, ts, ctx, mask = inputs(t=t, h=h, w=w)
        assert model(x, ts, ctx, mask).shape == x.shape
    x, ts, ctx, mask = inputs(t=3)  # an odd frame count is padded to whole temporal patches
    assert model(x, ts, ctx, mask).shape == x.shape
    x, ts, ctx, mask = inputs(h=10, w=13)  # odd sizes are zero-padded to whole patches, cropped back
    assert model(x, ts, ctx, mask).shape == x.shape
    with pytest.raises(ValueError, match="3 channels"):
        model(x[:, :2], ts, ctx, mask)


def test_class_conditional_and_guards():
    model = DiT(in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    x = torch.randn(2, 4, 1, 8, 8)
    assert model(x, torch.rand(2), class_labels=torch.tensor([1, 10])).shape == x.shape
    with pytest.raises(ValueError, match="class_labels"):
        model(x, torch.rand(2))
    with pytest.raises(ValueError, match="conditioning"):
        tiny("film")


def test_attention_backends_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    ref = attention(q, k, v, mask)
    with use_backend("math"):
        torch.testing.assert_close(attention(q, k, v, mask), ref)
    # float64 reference
    s = (q.double() @ k.double().transpose(-1, -2)) / 8**0.5
    s = s.masked_fill(~mask[:, None, None], float("-inf"))
    torch.testing.assert_close(ref.double(), s.softmax(-1) @ v.double(), rtol=1e-5, atol=1e-5)


OLD_LAYOUT = json.loads((Path(__file__).parent / "dit_spatial_temporal_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(OLD_LAYOUT))
def test_spatial_temporal_layout_keeps_its_checkpoints(name):
    """``DiT(layout="spatial_temporal")`` runs the one spatial-temporal block (STDiT's
    ``STDiTBlock``): the state dict of the former own block (keys, order and shapes written by
    the previous ``DiTBlock``, tests/models/dit_spatial_temporal_keys.json) loads strictly, and
    with its seeded weights the prediction is the one the former block gave (float64)."""
    entry = OLD_LAYOUT[name]
    model = DiT(**entry["kwargs"]).double().eval()
    assert all(isinstance(block, STDiTBlock) for block in model.blocks)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == entry["state_dict"]
    assert list(model.state_dict()) == list(entry["state_dict"])
    g = torch.Generator().manual_seed(0)
    model.load_state_dict({k: 0.3 * torch.randn(s, generator=g, dtype=torch.float64)
                           for k, s in entry["state_dict"].items()}, strict=True)
    x = torch.randn(1, 2, 2, 2, 2, generator=g, dtype=torch.float64)
    cond = (dict(context=torch.randn(1, 3, 4, generator=g, dtype=torch.float64)) if entry["kwargs"].get("context_dim")
            else dict(class_labels=torch.tensor([1])))
    with torch.no_grad():
        out = model(x, torch.tensor([500.0], dtype=torch.float64), **cond)
    want = torch.tensor(entry["output"], dtype=torch.float64)
    torch.testing.assert_close(out.flatten(), want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
