"""diffusers ``LatteTransformer3DModel`` → :class:`lvdm.models.stdit.STDiT` (``temporal="blocks"``,
temporal blocks without cross-attention, frame sin-cos code added after spatial block 0)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lvdm.models.convert.pixart import check_all_used, common_kwargs, convert_block, convert_common


def convert_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Latte diffusers state dict → STDiT keys (every source key is used or this raises)."""
    out: dict[str, torch.Tensor] = {}
    used = convert_common(sd, out)
    depth = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    for i in range(depth):
        used |= convert_block(sd, f"transformer_blocks.{i}", f"blocks.{i}", out)
        used |= convert_block(sd, f"temporal_transformer_blocks.{i}", f"temporal_blocks.{i}", out)
    check_all_used(sd, used, "LatteTransformer3DModel")
    return out


def stdit_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """STDiT constructor arguments equivalent to a ``LatteTransformer3DModel`` config."""
    kwargs = common_kwargs(config, "LatteTransformer3DModel")
    return dict(kwargs, temporal="blocks", temporal_cross_attention=False, temporal_position="sincos_stream",
                interpolation_scale=float(max(config["sample_size"] // 64, 1)))
