"""DeepSpeedAutocastPrecision: float32 tensors made in the forward meet bf16 weights safely."""

import pytest
import torch

pytest.importorskip("deepspeed")

from lvdm.distributed.precision import DeepSpeedAutocastPrecision  # noqa: E402


def test_bf16_mixed_autocasts_the_forward_and_32_true_does_not():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)  # DeepSpeed's bf16 module
    x = torch.randn(3, 8)  # e.g. a timestep embedding computed in float32
    with pytest.raises(RuntimeError):
        layer(x)
    with DeepSpeedAutocastPrecision("bf16-mixed").forward_context():
        y = layer(x)
    assert y.dtype == torch.bfloat16
    reference = x.double() @ layer.weight.double().T + layer.bias.double()
    torch.testing.assert_close(y.double(), reference, rtol=2e-2, atol=2e-2)
    with DeepSpeedAutocastPrecision("32-true").forward_context():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError):
        DeepSpeedAutocastPrecision("bf16-sometimes")
