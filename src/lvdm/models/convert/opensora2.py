"""Open-Sora 2.0's MMDiT checkpoint (``Open_Sora_v2.safetensors``, hpcaitech/Open-Sora's
``opensora/models/mmdit``, Flux-derived) → :class:`lvdm.models.mmdit.MMDiT`.

Both of its layouts convert: ``fused_qkv=True`` (``qkv``, ``linear1``) and the released
``fused_qkv=False`` (``q_proj, k_proj, v_proj``; a single-stream block's ``q_proj, k_proj,
v_mlp``), concatenated into lvdm's ``qkv`` and ``linear1``. Its packed-patch linears ``img_in``
and ``cond_in`` (inputs ``(c, ph, pw)``) become lvdm's patch convolutions, and the output rows
``(c, ph, pw)`` lvdm's ``(ph, pw, c)``. The key report is strict (:func:`~.hunyuan.report`).

One table of module names (:func:`module_rules`: lvdm module → Open-Sora module(s)) serves both
directions: :func:`convert_state_dict` loads Open-Sora's weights with it, and
:mod:`lvdm.finetune.lora_files` writes LoRA files under Open-Sora's names with it (the released
layout's ``q_proj`` / ``k_proj`` / ``v_proj``: lvdm's fused pair with B's rows split).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lvdm.models.convert.hunyuan import apply_rules, block_rules, patch_major, report

_TOP = {
    "t_embedder.mlp.0": "time_in.in_layer", "t_embedder.mlp.2": "time_in.out_layer",
    "guidance_embedder.mlp.0": "guidance_in.in_layer", "guidance_embedder.mlp.2": "guidance_in.out_layer",
    "pooled_text_embedder.fc1": "vector_in.in_layer", "pooled_text_embedder.fc2": "vector_in.out_layer",
    "context_embedder": "txt_in", "final_layer.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
}


def _stream(ours: str, theirs: str) -> dict:
    return {f"{ours}.adaLN_modulation.1": f"{theirs}_mod.lin", f"{ours}.proj": f"{theirs}_attn.proj",
            f"{ours}.q_norm": f"{theirs}_attn.norm.query_norm", f"{ours}.k_norm": f"{theirs}_attn.norm.key_norm",
            f"{ours}.mlp.fc1": f"{theirs}_mlp.0", f"{ours}.mlp.fc2": f"{theirs}_mlp.2"}


def _fused_or_parts(sd: Mapping[str, torch.Tensor], module: str, fused: str, parts: tuple[str, ...]):
    """The source of a QKV linear: ``{module}.{fused}`` where the checkpoint has it (``fused_qkv=True``),
    else its ``parts`` concatenated."""
    if f"{module}.{fused}.weight" in sd:
        return f"{module}.{fused}"
    return tuple(f"{module}.{p}" for p in parts)


def module_rules(sd: Mapping[str, Any]) -> dict[str, str | tuple[str, ...]]:
    """lvdm module → Open-Sora module (several: concatenated along the outputs), for the blocks
    whose names appear in ``sd``'s keys (a state dict, or :func:`block_keys`); the QKV linears
    fused where ``sd`` holds their fused weight, else in the parts of the released layout."""
    rules = dict(_TOP)
    streams = {**_stream("video", "img"), **_stream("text", "txt")}
    rules.update(block_rules(sd, "double_blocks.", "double_blocks.", streams))
    rules.update(block_rules(sd, "single_blocks.", "single_blocks.", {
        "adaLN_modulation.1": "modulation.lin", "linear2": "linear2", "q_norm": "norm.query_norm",
        "k_norm": "norm.key_norm"}))
    for i in range(len([k for k in rules if k.startswith("double_blocks.") and k.endswith(".video.proj")])):
        for ours, theirs in (("video", "img"), ("text", "txt")):
            rules[f"double_blocks.{i}.{ours}.qkv"] = _fused_or_parts(
                sd, f"double_blocks.{i}.{theirs}_attn", "qkv", ("q_proj", "k_proj", "v_proj"))
    for i in range(len([k for k in rules if k.startswith("single_blocks.") and k.endswith(".linear2")])):
        rules[f"single_blocks.{i}.linear1"] = _fused_or_parts(sd, f"single_blocks.{i}", "linear1",
                                                              ("q_proj", "k_proj", "v_mlp"))
    return rules


def block_keys(double: int, single: int) -> dict[str, None]:
    """One Open-Sora key per block (what :func:`module_rules` counts) of a model of these depths:
    the released layout (no fused QKV)."""
    return dict.fromkeys([f"double_blocks.{i}." for i in range(double)] + [f"single_blocks.{i}." for i in range(single)])


def convert_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, Any] | None = None,
                       patch_size: tuple[int, int] = (2, 2)) -> dict[str, torch.Tensor]:
    """An Open-Sora 2.0 MMDiT state dict → MMDiT keys (strict: see :func:`~.hunyuan.report`);
    ``patch_size``: the ``(ph, pw)`` its pipeline packs latents with."""
    out: dict[str, torch.Tensor] = {}
    used = apply_rules(sd, module_rules(sd), out)
    for src, dst in (("img_in", "x_embedder.proj"), ("cond_in", "cond_embedder.proj")):
        if f"{src}.weight" in sd:  # a linear over (c, ph, pw) patches is the (1, ph, pw) convolution
            out[f"{dst}.weight"] = sd[f"{src}.weight"].unflatten(1, (-1, 1, *patch_size))
            out[f"{dst}.bias"] = sd[f"{src}.bias"]
            used |= {f"{src}.weight", f"{src}.bias"}
    channels = sd["final_layer.linear.weight"].shape[0] // (patch_size[0] * patch_size[1])
    for param in ("weight", "bias"):
        if f"final_layer.linear.{param}" in sd:
            out[f"final_layer.linear.{param}"] = patch_major(sd[f"final_layer.linear.{param}"], channels)
            used.add(f"final_layer.linear.{param}")
    report(sd, used, out, expected, "Open-Sora 2.0 MMDiT")
    return out


def mmdit_kwargs(config: Mapping[str, Any], patch_size: int = 2) -> dict[str, Any]:
    """MMDiT arguments equivalent to an Open-Sora 2.0 model config (its ``configs/diffusion``
    ``model`` dict: ``in_channels`` counts packed ``(c, ph, pw)`` channels)."""
    if not config.get("qkv_bias", False):
        raise ValueError("Open-Sora 2.0 qkv_bias=False: lvdm's MMDiT has QKV biases (the released model has them)")
    channels = config["in_channels"] // patch_size**2
    return dict(
        in_channels=channels, patch_size=(1, patch_size, patch_size), hidden_size=config["hidden_size"],
        num_heads=config["num_heads"], depth_double=config["depth"], depth_single=config["depth_single_blocks"],
        mlp_ratio=config["mlp_ratio"], context_dim=config["context_in_dim"], refiner_depth=0, text_mask=False,
        image_condition_channels=channels + 1 if config.get("cond_embed") else 0,
        pooled_text_dim=config["vec_in_dim"], guidance_embed=bool(config.get("guidance_embed")),
        rope_theta=float(config["theta"]), rope_axes_dims=tuple(config["axes_dim"]),
    )
