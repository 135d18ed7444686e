"""The Wan repository's own transformer checkpoints (Wan-Video/Wan2.1 ``wan/modules/model.py``:
``diffusion_pytorch_model*.safetensors`` of hf Wan-AI/Wan2.1-T2V-1.3B) ↔ diffusers'
``WanTransformer3DModel`` names, the model inside lvdm's
:class:`~lvdm.models.diffusers_adapter.WanBackbone`.

One table (:func:`module_rules`: diffusers module → Wan module) serves both directions:
:func:`convert_state_dict` loads Wan's weights with it, and :mod:`lvdm.finetune.lora_files` writes
LoRA files under Wan's names with it. Every weight maps as it is (no fused projections, no
reordered rows); the modulation tables are parameters, not modules (:data:`TABLES`). Wan's
``norm3`` (the cross-attention norm) is diffusers' ``norm2``. The I2V image tokens
(``img_emb``, ``k_img``, ``v_img``) are not taken: the key report refuses them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lvdm.models.convert.hunyuan import apply_rules, block_rules, report

_TOP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
_BLOCK = {
    **{f"{ours}.{inner}": f"{theirs}.{outer}" for ours, theirs in (("attn1", "self_attn"), ("attn2", "cross_attn"))
       for inner, outer in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"), ("norm_q", "norm_q"),
                            ("norm_k", "norm_k"))},
    "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
#: diffusers parameter → Wan parameter of the modulation tables (``{i}``: a block's number).
TABLES = {"scale_shift_table": "head.modulation", "blocks.{i}.scale_shift_table": "blocks.{i}.modulation"}


def module_rules(sd: Mapping[str, Any]) -> dict[str, str]:
    """diffusers module → Wan module, for the blocks whose Wan names appear in ``sd``'s keys (a
    state dict, or any mapping with one key per block, e.g. ``blocks.3.``)."""
    return {**_TOP, **block_rules(sd, "blocks.", "blocks.", _BLOCK)}


def block_keys(layers: int) -> dict[str, None]:
    """One Wan key per block (what :func:`module_rules` counts) of a model of ``layers`` blocks."""
    return {f"blocks.{i}.": None for i in range(layers)}


def table_rules(sd: Mapping[str, Any]) -> dict[str, str]:
    """diffusers parameter → Wan parameter of every modulation table of a model with ``sd``'s blocks."""
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    return {ours.format(i=i): theirs.format(i=i) for ours, theirs in TABLES.items()
            for i in (range(layers) if "{i}" in ours else [None])}


def convert_state_dict(sd: Mapping[str, torch.Tensor],
                       expected: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A Wan state dict (``model.diffusion_model.`` prefixes of ComfyUI files dropped) → diffusers'
    ``WanTransformer3DModel`` keys, strictly: a Wan weight without a place, a diffusers weight
    without a value or a shape that differs raises ``KeyError`` naming them."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    used = apply_rules(sd, module_rules(sd), out)
    for ours, theirs in table_rules(sd).items():
        if theirs in sd:
            out[ours] = sd[theirs]
            used.add(theirs)
    report(sd, used, out, expected, "Wan (the Wan repository's layout)", "WanTransformer3DModel")
    return out
