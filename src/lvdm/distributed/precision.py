"""bf16 under DeepSpeed for models that mix dtypes inside their forward.

With ``bf16`` enabled DeepSpeed holds the module's weights *in* bf16 (the float32 masters
live in the optimizer) and, unlike DDP's ``bf16-mixed``, runs no autocast: any float32 tensor
made inside the forward (timestep embeddings, noise mixed with the latents) then meets bf16
weights and the matmul fails ("Input type (float) and bias type (BFloat16) should be the
same"). Lightning's ``DeepSpeedPrecision`` only casts the batch. This plugin also runs the
forward under ``torch.autocast``, which casts matmul/conv inputs to bf16 and keeps
reductions and norms in float32, so lvdm's models stay free of dtype plumbing.
"""

from __future__ import annotations

import contextlib

import torch
from lightning.pytorch.plugins.precision import DeepSpeedPrecision


class DeepSpeedAutocastPrecision(DeepSpeedPrecision):
    """Lightning's ``DeepSpeedPrecision`` plus ``torch.autocast`` around forward passes for ``*-mixed``.

    Args:
        precision: ``bf16-mixed`` (what the strategy fragments use), ``16-mixed``, or
            ``32-true`` / ``bf16-true`` / ``16-true`` (no autocast).
    """

    def __init__(self, precision: str = "bf16-mixed"):
        super().__init__(precision)

    def forward_context(self) -> contextlib.AbstractContextManager:
        if not self.precision.endswith("-mixed"):
            return contextlib.nullcontext()
        from deepspeed.accelerator import get_accelerator

        return torch.autocast(get_accelerator().device_name(), dtype=self._desired_dtype)
