"""lvdm.distributed.plan: a model's declared SequenceSplit applied with hooks, on one process
(a stand-in group of size 2 plays rank 1: cut = narrow, gather = the chunk repeated)."""

import pytest
import torch
from torch import nn

from lvdm.distributed.plan import apply_sequence_split, check_sequence_split, remove_sequence_split
from lvdm.models.dit import DiT
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.ops.attention import sequence_parallel


class _Rank1Of2:
    size, rank = 2, 1

    def shard(self, x, dim):
        return x.narrow(dim, x.shape[dim] // 2, x.shape[dim] // 2)

    def gather(self, x, dim):
        return torch.cat([torch.zeros_like(x), x], dim)  # rank 0's chunk stands in as zeros


class _Block(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x, grid, per_token_t=None, scale=1.0):
        self.seen.append((x.clone(), grid, None if per_token_t is None else per_token_t.clone()))
        return x * scale + (0 if per_token_t is None else per_token_t)


class _Toy(nn.Module):
    sequence_parallel_plan = SequenceSplit(blocks="blocks", tokens="x", grid="grid", gather="head",
                                           follow_split=("per_token_t",))

    def __init__(self):
        super().__init__()
        self.seen = []
        self.blocks = nn.ModuleList([_Block(self.seen), _Block(self.seen)])
        self.head = nn.Identity()

    def forward(self, x, grid, per_token_t):
        for block in self.blocks:
            x = block(x, grid, per_token_t=per_token_t, scale=2.0)
        return self.head(x)


def test_split_cuts_tokens_and_per_token_inputs_localises_grid_and_gathers():
    model = _Toy()
    x = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)  # grid (4, 1, 2): 8 tokens
    t = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8, 1)  # per token, [B, N, 1]
    reference = model(x, (4, 1, 2), t)
    model.seen.clear()
    assert apply_sequence_split(model) == [model]
    assert torch.equal(model(x, (4, 1, 2), t), reference)  # off: nothing changes
    model.seen.clear()
    with sequence_parallel(_Rank1Of2()):
        out = model(x, (4, 1, 2), t)
    (x0, grid0, t0), (_, grid1, t1) = model.seen
    assert torch.equal(x0, x[:, 4:]) and grid0 == grid1 == (2, 1, 2)
    assert torch.equal(t0, t[:, 4:]) and torch.equal(t1, t[:, 4:])
    assert out.shape == x.shape and torch.equal(out[:, 4:], reference[:, 4:]) and not out[:, :4].any()
    remove_sequence_split(model)
    model.seen.clear()
    with sequence_parallel(_Rank1Of2()):
        model(x, (4, 1, 2), t)
    assert model.seen[0][0].shape == x.shape  # unhooked: the full sequence again


def test_dit_under_the_plan_matches_the_rank_chunk():
    torch.manual_seed(0)
    dit = DiT(in_channels=2, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=4, conditioning="cross_attn",
              layout="spatial_temporal", context_dim=8)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.2)
    x, ctx = torch.randn(1, 2, 4, 4, 4), torch.randn(1, 3, 8)
    apply_sequence_split(dit)

    class _Size2Local(_Rank1Of2):  # attention stays local: compare the purely per-frame parts
        def attention(self, q, k, v, key_mask, local_attention):
            raise AssertionError("only called for sharded attention")

    with sequence_parallel(_Size2Local()):
        with pytest.raises(AssertionError, match="sharded attention"):
            dit(x, torch.tensor([10.0]), ctx)  # temporal attention is sharded: the plan reached it
        with pytest.raises(ValueError, match="3 frames after patching, not divisible by the sequence-parallel size 2"):
            dit(x[:, :, :3], torch.tensor([10.0]), ctx)


def test_checks_in_one_place():
    in_context = DiT(in_channels=2, hidden_size=24, depth=1, num_heads=2, conditioning="in_context", context_dim=8)
    with pytest.raises(ValueError, match="conditioning='in_context'.*adaln or cross_attn"):
        check_sequence_split(in_context, 2)
    three = DiT(in_channels=2, hidden_size=24, depth=1, num_heads=3, context_dim=8)
    with pytest.raises(ValueError, match="3 attention heads do not divide by 2; use mode='ring'"):
        check_sequence_split(three, 2, "ulysses")
    check_sequence_split(three, 2, "ring")
    check_sequence_split(three, 2, "ring", grid=(4, 2, 2))
    with pytest.raises(ValueError, match="has 3 frames"):
        check_sequence_split(three, 2, "ring", grid=(3, 2, 2))
    with pytest.raises(ValueError, match="sequence_parallel_plan"):
        apply_sequence_split(nn.Linear(2, 2))
