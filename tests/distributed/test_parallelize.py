"""parallelize(): SP hooks, then activation checkpointing, then per-block compile, all read from
what the backbone declares; the model's outputs and gradients stay those of the plain model."""

import pytest
import torch

from lvdm.distributed.activation_checkpointing import checkpointed_blocks
from lvdm.distributed.parallelize import parallelize
from lvdm.models.dit import DiT
from lvdm.models.stdit import STDiT


def _stdit(**kw):
    return STDiT(in_channels=2, hidden_size=24, depth=2, num_heads=2, patch_size=(1, 2, 2), context_dim=8,
                 context_length=3, temporal="blocks", temporal_position="rope", **kw)


def _loss_and_grads(model, x, t, ctx):
    model.zero_grad()
    out = model(x, t, ctx)
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_all_three_in_order_keep_outputs_and_gradients(assert_close_scaled):
    torch.manual_seed(0)
    model = _stdit()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    x, t, ctx = torch.randn(2, 2, 4, 4, 4), torch.rand(2) * 1000, torch.randn(2, 5, 8)
    out, grads = _loss_and_grads(model, x, t, ctx)
    done = parallelize(model, sp=2, sp_mode="ring", ac=1.0, compile=dict(backend="eager"))
    assert done.split == [model] and len(done.checkpointed) == 4 == done.compiled  # 2 spatial + 2 temporal
    assert checkpointed_blocks(model) == done.checkpointed
    out2, grads2 = _loss_and_grads(model, x, t, ctx)  # one process: the SP hooks pass through
    assert_close_scaled(out2, out)
    for a, b in zip(grads2, grads):
        assert_close_scaled(a, b)


@pytest.mark.parametrize("model,kwargs,match", [
    (lambda: DiT(hidden_size=24, depth=1, num_heads=2, conditioning="in_context"), {}, "in_context"),
    (lambda: _stdit(), {"sp": 4, "sp_mode": "ulysses"}, "2 attention heads"),
    (lambda: torch.nn.Linear(2, 2), {}, "sequence_parallel_plan"),
])
def test_refuses_what_the_declared_plan_cannot_serve(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        parallelize(model(), **{"sp": 2, **kwargs})
