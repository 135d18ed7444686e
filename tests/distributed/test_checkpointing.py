"""Activation checkpointing: same numbers, same parameter names, and it really recomputes."""

import math

import pytest
import torch

from lvdm.distributed.activation_checkpointing import (
    apply_activation_checkpointing,
    checkpointed_blocks,
    remove_activation_checkpointing,
)
from lvdm.models.dit import DiT


def _model(layout="spatial_temporal"):
    torch.manual_seed(0)
    model = DiT(in_channels=2, patch_size=(1, 2, 2), hidden_size=32, depth=4, num_heads=4,
                conditioning="cross_attn", layout=layout, context_dim=8).double()
    with torch.no_grad():  # leave the identity initialisation: every gradient must be non-trivial
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def _step(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(2, generator=g, dtype=torch.float64) * 1000
    ctx = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    model.zero_grad()
    loss = model(x, t, ctx, mask).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _count_mlp_calls(model):
    calls = []
    for i, block in enumerate(model.blocks):
        block.mlp.register_forward_hook(lambda *_, i=i: calls.append(i))
    return calls


@pytest.mark.parametrize("layout", ["full", "spatial_temporal"])
def test_checkpointing_keeps_loss_grads_and_keys_and_recomputes(layout):
    model = _model(layout)
    keys = list(model.state_dict())
    calls = _count_mlp_calls(model)
    loss, grads = _step(model)
    assert calls == [0, 1, 2, 3]  # one forward per block

    chosen = apply_activation_checkpointing(model, fraction=0.5)
    assert chosen == [model.blocks[0], model.blocks[1]]  # ceil(0.5 * 4) blocks, from the first
    calls.clear()
    loss_ckpt, grads_ckpt = _step(model)
    # blocks 0 and 1 run again in backward (in reverse order), blocks 2 and 3 do not
    assert sorted(calls) == [0, 0, 1, 1, 2, 3]
    assert list(model.state_dict()) == keys
    assert torch.equal(loss, loss_ckpt)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-12, atol=1e-12, msg=name)  # float64
    assert max(g.abs().max().item() for g in grads.values()) > 1e-3

    remove_activation_checkpointing(model)
    assert checkpointed_blocks(model) == []
    calls.clear()
    _step(model)
    assert calls == [0, 1, 2, 3]


@pytest.mark.parametrize("fraction,expect", [(0.0, 0), (0.1, 1), (0.75, 3), (1.0, 4)])
def test_fraction_counts_blocks_from_the_first(fraction, expect):
    model = _model()
    chosen = apply_activation_checkpointing(model, fraction)
    assert len(chosen) == expect == math.ceil(fraction * 4)
    assert checkpointed_blocks(model) == list(model.blocks[:expect])
    apply_activation_checkpointing(model, 1.0)  # re-applying replaces, never nests
    assert checkpointed_blocks(model) == list(model.blocks)


def test_no_recompute_without_grad():
    model = _model()
    apply_activation_checkpointing(model, 1.0)
    calls = _count_mlp_calls(model)
    with torch.no_grad():
        model(torch.randn(1, 2, 4, 4, 4, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
              torch.randn(1, 5, 8, dtype=torch.float64))
    assert calls == [0, 1, 2, 3]


def test_bad_fraction_and_model_without_blocks():
    with pytest.raises(ValueError, match="fraction"):
        apply_activation_checkpointing(_model(), 1.5)
    with pytest.raises(ValueError, match="block_class"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2), 1.0)


def test_offload_packs_exactly_the_inputs_of_the_checkpointed_blocks():
    """With offload the host hook packs every tensor a checkpointed block is called with (the
    tokens and the conditioning), once, and nothing of what the blocks compute inside; the
    blocks left unchecked pack nothing."""
    model = _model()
    inputs: dict[int, list[torch.Tensor]] = {}

    def record(i, args, kwargs):
        inputs[i] = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]

    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, args, kwargs, i=i: record(i, args, kwargs), with_kwargs=True)
    chosen = apply_activation_checkpointing(model, 0.5, offload=True)
    assert checkpointed_blocks(model) == chosen == list(model.blocks[:2])
    with torch.no_grad():  # no graph, nothing saved
        model(torch.randn(1, 2, 4, 4, 4, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
              torch.randn(1, 5, 8, dtype=torch.float64))
    assert all(block.forward.offload.tensors == 0 for block in chosen)
    inputs.clear()
    _step(model)
    for i, block in enumerate(chosen):
        assert block.forward.offload.tensors == len(inputs[i]) >= 2  # tokens, conditioning, context…
        assert block.forward.offload.bytes == sum(t.numel() * t.element_size() for t in inputs[i])
    tokens = inputs[0][0]
    assert tokens.numel() == 2 * (4 * 2 * 2) * 32  # the token stream first: 2 samples × 16 patches × hidden 32


def test_offload_needs_checkpointing():
    from lvdm.distributed.parallelize import parallelize
    from lvdm.training.callbacks.parallel import ActivationCheckpointing

    with pytest.raises(ValueError, match="ac > 0"):
        parallelize(_model(), ac=0.0, ac_offload=True)
    with pytest.raises(ValueError, match="fraction > 0"):
        ActivationCheckpointing(fraction=0.0, offload=True)
    assert ActivationCheckpointing(fraction=0.5, offload=True).offload
