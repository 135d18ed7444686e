"""Tencent's original HunyuanVideo transformer (``mp_rank_00_model_states.pt`` of hf
tencent/HunyuanVideo, ``hyvideo/modules/models.py`` and ``token_refiner.py``) ↔ lvdm's
:class:`~lvdm.models.mmdit.MMDiT`.

One table of module names (:func:`module_rules`: lvdm module → Tencent module) serves both
directions: :func:`convert_state_dict` loads Tencent's weights with it, and
:mod:`lvdm.finetune.lora_files` writes LoRA files under Tencent's names with it. Tencent fuses
what lvdm fuses (``img_attn_qkv``, a single block's ``linear1``), so every weight maps as it is,
but for the final layer's output rows (``(c, pt, ph, pw)`` in Tencent's unpatchify, lvdm's
``(pt, ph, pw, c)``), which the converter reorders and the table therefore leaves out.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lvdm.models.convert.hunyuan import apply_rules, block_rules, patch_major, report

#: lvdm module → Tencent module, outside the repeated blocks.
_TOP = {
    "x_embedder.proj": "img_in.proj",
    "t_embedder.mlp.0": "time_in.mlp.0", "t_embedder.mlp.2": "time_in.mlp.2",
    "guidance_embedder.mlp.0": "guidance_in.mlp.0", "guidance_embedder.mlp.2": "guidance_in.mlp.2",
    "pooled_text_embedder.fc1": "vector_in.in_layer", "pooled_text_embedder.fc2": "vector_in.out_layer",
    "context_embedder.t_embedder.mlp.0": "txt_in.t_embedder.mlp.0",
    "context_embedder.t_embedder.mlp.2": "txt_in.t_embedder.mlp.2",
    "context_embedder.c_embedder.fc1": "txt_in.c_embedder.linear_1",
    "context_embedder.c_embedder.fc2": "txt_in.c_embedder.linear_2",
    "context_embedder.proj_in": "txt_in.input_embedder",
}
_REFINER = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "self_attn_qkv", "attn.proj": "self_attn_proj",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "adaLN_modulation.1": "adaLN_modulation.1"}
_DOUBLE = {f"{ours}.{inner}": f"{theirs}_{outer}" for ours, theirs in (("video", "img"), ("text", "txt"))
           for inner, outer in (("adaLN_modulation.1", "mod.linear"), ("qkv", "attn_qkv"), ("q_norm", "attn_q_norm"),
                                ("k_norm", "attn_k_norm"), ("proj", "attn_proj"), ("mlp.fc1", "mlp.fc1"),
                                ("mlp.fc2", "mlp.fc2"))}
_SINGLE = {"adaLN_modulation.1": "modulation.linear", "linear1": "linear1", "linear2": "linear2",
           "q_norm": "q_norm", "k_norm": "k_norm"}
_REFINER_BLOCKS = "txt_in.individual_token_refiner.blocks."


def module_rules(sd: Mapping[str, Any]) -> dict[str, str]:
    """lvdm module → Tencent module, for the blocks whose Tencent names appear in ``sd``'s keys
    (a state dict, or any mapping with one key per block, e.g. ``double_blocks.3.``)."""
    return {**_TOP, **block_rules(sd, "context_embedder.blocks.", _REFINER_BLOCKS, _REFINER),
            **block_rules(sd, "double_blocks.", "double_blocks.", _DOUBLE),
            **block_rules(sd, "single_blocks.", "single_blocks.", _SINGLE)}


def block_keys(double: int, single: int, refiner: int) -> dict[str, None]:
    """One Tencent key per block (what :func:`module_rules` counts) of a model of these depths."""
    prefixes = (("double_blocks.", double), ("single_blocks.", single), (_REFINER_BLOCKS, refiner))
    return {f"{prefix}{i}.": None for prefix, count in prefixes for i in range(count)}


def convert_state_dict(sd: Mapping[str, torch.Tensor],
                       expected: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Tencent's HunyuanVideo state dict → MMDiT keys, strictly (see :func:`~.hunyuan.report`).
    The final adaLN is ``(shift, scale)`` in both; the final linear's rows are reordered."""
    out: dict[str, torch.Tensor] = {}
    used = apply_rules(sd, {**module_rules(sd), "final_layer.adaLN_modulation.1": "final_layer.adaLN_modulation.1"},
                       out)
    if "img_in.proj.weight" in sd:
        channels = sd["img_in.proj.weight"].shape[1]
        for param in ("weight", "bias"):
            if f"final_layer.linear.{param}" in sd:
                out[f"final_layer.linear.{param}"] = patch_major(sd[f"final_layer.linear.{param}"], channels)
                used.add(f"final_layer.linear.{param}")
    report(sd, used, out, expected, "HunyuanVideo (Tencent's layout)")
    return out

