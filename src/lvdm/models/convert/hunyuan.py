"""diffusers ``HunyuanVideoTransformer3DModel`` → :class:`lvdm.models.mmdit.MMDiT`.

Pure key and shape mapping: separate ``to_q`` / ``to_k`` / ``to_v`` become one ``qkv`` linear,
a single-stream block's ``to_q, to_k, to_v, proj_mlp`` its ``linear1``, and the final layer's
``(scale, shift)`` rows are swapped to lvdm's ``(shift, scale)``. :func:`convert_state_dict`
reports strictly: a source weight without a place, or an MMDiT weight left without a value,
raises with the names. The image-to-video variants (``image_condition_type``) are not converted.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

Linear = tuple[str, ...]

#: lvdm name → diffusers name of every weight outside the repeated blocks (``*``: weight and bias).
_TOP = {
    "x_embedder.proj": "x_embedder.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_embedder.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_embedder.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "pooled_text_embedder.fc1": "time_text_embed.text_embedder.linear_1",
    "pooled_text_embedder.fc2": "time_text_embed.text_embedder.linear_2",
    "context_embedder.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "context_embedder.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "context_embedder.c_embedder.fc1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "context_embedder.c_embedder.fc2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "context_embedder.proj_in": "context_embedder.proj_in",
}

_REFINER = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attn.to_out.0", "mlp.fc1": "ff.net.0.proj",
            "mlp.fc2": "ff.net.2", "adaLN_modulation.1": "norm_out.linear",
            "attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v")}

_DOUBLE = {
    "video.adaLN_modulation.1": "norm1.linear", "text.adaLN_modulation.1": "norm1_context.linear",
    "video.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "text.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "video.q_norm": "attn.norm_q", "video.k_norm": "attn.norm_k",
    "text.q_norm": "attn.norm_added_q", "text.k_norm": "attn.norm_added_k",
    "video.proj": "attn.to_out.0", "text.proj": "attn.to_add_out",
    "video.mlp.fc1": "ff.net.0.proj", "video.mlp.fc2": "ff.net.2",
    "text.mlp.fc1": "ff_context.net.0.proj", "text.mlp.fc2": "ff_context.net.2",
}

_SINGLE = {
    "adaLN_modulation.1": "norm.linear", "q_norm": "attn.norm_q", "k_norm": "attn.norm_k", "linear2": "proj_out",
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
}


def block_rules(sd: Mapping[str, torch.Tensor], ours: str, theirs: str, table: Mapping[str, str | Linear]) -> dict:
    """The rules of every numbered block ``{theirs}{i}.`` in ``sd``: ``table`` (lvdm name inside
    the block → source name(s) inside it) applied to each, as ``{ours}{i}.``."""
    count = len({k[len(theirs):].split(".")[0] for k in sd if k.startswith(theirs)})
    def source(i: int, src: str | Linear) -> str | Linear:
        return tuple(f"{theirs}{i}.{s}" for s in src) if isinstance(src, tuple) else f"{theirs}{i}.{src}"

    return {f"{ours}{i}.{dst}": source(i, src) for i in range(count) for dst, src in table.items()}


def module_rules(sd: Mapping[str, torch.Tensor]) -> dict[str, str | Linear]:
    """lvdm module name → diffusers module name(s) (several: concatenated along the outputs)."""
    refiner = block_rules(sd, "context_embedder.blocks.", "context_embedder.token_refiner.refiner_blocks.", _REFINER)
    return {**_TOP, **refiner, **block_rules(sd, "double_blocks.", "transformer_blocks.", _DOUBLE),
            **block_rules(sd, "single_blocks.", "single_transformer_blocks.", _SINGLE)}


def patch_major(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """diffusers (and Open-Sora 2.0's unpacking) read a token's outputs as ``[C, pt, ph, pw]``,
    lvdm as ``[pt, ph, pw, C]``: reorder the rows of the output projection."""
    return rows.unflatten(0, (channels, -1)).transpose(0, 1).flatten(0, 1)


def apply_rules(sd: Mapping[str, torch.Tensor], rules: Mapping[str, str | Linear],
                out: dict[str, torch.Tensor]) -> set[str]:
    """Copy every ``weight`` / ``bias`` (and an RMSNorm's ``scale``, lvdm's ``weight``) of the
    source modules named in ``rules`` (lvdm module → source module, or several concatenated along
    the outputs) into ``out``; returns the source keys used."""
    used: set[str] = set()
    for dst, src in rules.items():
        for param, ours in (("weight", "weight"), ("bias", "bias"), ("scale", "weight")):
            names = [f"{s}.{param}" for s in (src if isinstance(src, tuple) else (src,))]
            if all(n in sd for n in names):
                out[f"{dst}.{ours}"] = torch.cat([sd[n] for n in names]) if len(names) > 1 else sd[names[0]]
                used.update(names)
    return used


def convert_state_dict(sd: Mapping[str, torch.Tensor],
                       expected: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A diffusers HunyuanVideo transformer state dict → MMDiT keys. Every source weight must be
    used; with ``expected`` (an MMDiT's ``state_dict()``) every MMDiT weight must be given and
    have its shape. Raises ``KeyError`` naming the weights otherwise."""
    out: dict[str, torch.Tensor] = {}
    used = apply_rules(sd, module_rules(sd), out)
    channels = sd["x_embedder.proj.weight"].shape[1]
    for param in ("weight", "bias"):
        if f"norm_out.linear.{param}" in sd:  # diffusers' AdaLayerNormContinuous: (scale, shift); lvdm: (shift, scale)
            out[f"final_layer.adaLN_modulation.1.{param}"] = torch.cat(sd[f"norm_out.linear.{param}"].chunk(2)[::-1])
            used.add(f"norm_out.linear.{param}")
        if f"proj_out.{param}" in sd:  # output rows (channel, patch position) → lvdm's (patch position, channel)
            out[f"final_layer.linear.{param}"] = patch_major(sd[f"proj_out.{param}"], channels)
            used.add(f"proj_out.{param}")
    report(sd, used, out, expected, "HunyuanVideoTransformer3DModel")
    return out


def report(sd: Mapping[str, torch.Tensor], used: set[str], out: Mapping[str, torch.Tensor],
           expected: Mapping[str, Any] | None, source: str) -> None:
    """The strict key report: raise ``KeyError`` listing unused source weights, MMDiT weights
    without a value and shape mismatches."""
    problems = []
    unused = sorted(set(sd) - used)
    if unused:
        problems.append(f"{len(unused)} source weights have no place in MMDiT: {unused[:8]}")
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        if missing:
            problems.append(f"{len(missing)} MMDiT weights have no source: {missing[:8]}")
        wrong = [f"{k} {list(out[k].shape)} != {list(expected[k].shape)}" for k in sorted(set(expected) & set(out))
                 if tuple(out[k].shape) != tuple(expected[k].shape)]
        if wrong:
            problems.append(f"{len(wrong)} shapes differ: {wrong[:8]}")
    if problems:
        raise KeyError(f"{source} → MMDiT: " + "; ".join(problems))


def mmdit_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """MMDiT constructor arguments equivalent to a ``HunyuanVideoTransformer3DModel`` config."""
    if config.get("image_condition_type") is not None:
        raise ValueError(f"HunyuanVideo image_condition_type={config['image_condition_type']!r} is not supported "
                         "by lvdm's MMDiT (text-to-video only)")
    if config.get("qk_norm", "rms_norm") != "rms_norm":
        raise ValueError(f"HunyuanVideo qk_norm={config['qk_norm']!r}: lvdm's MMDiT has rms_norm only")
    if (config.get("out_channels") or config["in_channels"]) != config["in_channels"]:
        raise ValueError("lvdm's MMDiT predicts as many channels as it takes: out_channels must equal in_channels")
    p = config["patch_size"]
    return dict(
        in_channels=config["in_channels"], patch_size=(config["patch_size_t"], p, p),
        hidden_size=config["num_attention_heads"] * config["attention_head_dim"],
        num_heads=config["num_attention_heads"], depth_double=config["num_layers"],
        depth_single=config["num_single_layers"], mlp_ratio=config["mlp_ratio"],
        context_dim=config["text_embed_dim"], refiner_depth=config["num_refiner_layers"],
        pooled_text_dim=config["pooled_projection_dim"], guidance_embed=config["guidance_embeds"],
        rope_theta=config["rope_theta"], rope_axes_dims=tuple(config["rope_axes_dim"]),
    )
