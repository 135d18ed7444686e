"""Rotary position codes: the relative-position property, identity at position 0, the 3D
channel split, and STDiT with ``position='rope_3d'``."""

import math

import pytest
import torch

from lvdm.models.rope import apply_rope, rope_1d, rope_3d, rotate_pairs, split_rope_dims
from lvdm.models.stdit import STDiT


def test_rope_1d_matches_a_complex_rotation_reference(assert_close_scaled):
    """Channel pair i of position p is multiplied by e^{i·p·θ_i}, θ_i = 10000^(-2i/d) (float64 reference)."""
    d, n = 8, 5
    x = torch.randn(3, n, d, dtype=torch.float64)
    cos, sin = rope_1d(n, d)
    got = apply_rope(x, cos.double(), sin.double())
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(n, d // 2, dtype=torch.float64), torch.arange(n, dtype=torch.float64)[:, None] * theta)
    want = torch.view_as_real(torch.view_as_complex(x.reshape(3, n, d // 2, 2)) * rot).reshape(3, n, d)
    assert_close_scaled(got, want)  # float32 tables


def test_identity_at_zero_offset_and_norm_preserved():
    x = torch.randn(2, 4, 12, 12)
    cos, sin = rope_3d((2, 2, 3), 12)
    out = apply_rope(x, cos, sin)
    assert torch.equal(out[..., 0, :], x[..., 0, :])  # token (0, 0, 0): no rotation
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    assert not torch.allclose(out[..., 1:, :], x[..., 1:, :])


@pytest.mark.parametrize("head_dim", [12, 16, 72])
def test_scores_depend_only_on_the_3d_offset(head_dim):
    """q at (t, h, w) · k at (t', h', w') after RoPE equals the score at (t + s, h + s', w + s'')
    vs (t' + s, h' + s', w' + s''): only offsets matter, in every axis."""
    grid = (4, 5, 6)
    cos, sin = rope_3d(grid, head_dim)
    cos, sin = cos.double().view(*grid, head_dim), sin.double().view(*grid, head_dim)
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)

    def score(p, r):
        return (apply_rope(q, cos[p], sin[p]) * apply_rope(k, cos[r], sin[r])).sum()

    a, b, shift = (1, 0, 2), (0, 3, 1), (2, 1, 3)
    moved = lambda p: tuple(x + s for x, s in zip(p, shift))  # noqa: E731
    tol = 1e-5 * float(q.norm() * k.norm())  # float32 tables: rounding scales with |q| |k|
    assert math.isclose(score(a, b), score(moved(a), moved(b)), abs_tol=tol)
    assert math.isclose(score(a, a), float(q @ k), abs_tol=tol)  # zero offset: the plain score
    # and the score does change with the offset in each axis
    for axis in range(3):
        c = list(b)
        c[axis] = (c[axis] + 1) % grid[axis]
        assert not math.isclose(score(a, b), score(a, tuple(c)), abs_tol=tol)


def test_split_and_bad_sizes():
    assert split_rope_dims(72) == (24, 24, 24) and split_rope_dims(64) == (24, 20, 20)
    assert sum(split_rope_dims(128)) == 128
    with pytest.raises(ValueError, match="even head_dim"):
        split_rope_dims(7)
    assert torch.equal(rotate_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-2.0, 1.0, -4.0, 3.0]))


def test_stdit_with_3d_rope_sees_positions_only_through_attention():
    """With ``position='rope_3d'`` there is no additive code: swapping two patches of a frame
    changes the output by more than the swap (attention sees their new positions), while a
    model without any position code would be permutation-equivariant within the frame."""
    torch.manual_seed(0)
    kw = dict(in_channels=2, patch_size=(1, 1, 1), hidden_size=24, depth=1, num_heads=2, context_dim=8,
              temporal="blocks", temporal_position="none")
    rope = STDiT(**kw, position="rope_3d").eval()
    with torch.no_grad():
        for p in rope.parameters():
            p.normal_(0, 0.3)
    x, ctx, t = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 3, 8), torch.tensor([100.0])
    swapped = x.clone()
    swapped[..., 0, 0], swapped[..., 3, 3] = x[..., 3, 3], x[..., 0, 0]
    with torch.no_grad():
        out, out_swapped = rope(x, t, ctx), rope(swapped, t, ctx)
    back = out_swapped.clone()
    back[..., 0, 0], back[..., 3, 3] = out_swapped[..., 3, 3], out_swapped[..., 0, 0]
    assert (back - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="temporal_position='none'"):
        STDiT(hidden_size=24, depth=1, num_heads=2, context_dim=8, position="rope_3d", temporal_position="rope")
