"""diffusers ``PixArtTransformer2DModel`` → :class:`lvdm.models.stdit.STDiT` (``temporal="none"``)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

#: diffusers ``BasicTransformerBlock`` (ada_norm_single) leaf → STDiT block leaf; q/k/v are fused below.
_BLOCK = {
    "attn1.to_out.0": "attn.proj",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_out.0": "cross_attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}

#: top-level diffusers module → STDiT module (shared by PixArt and Latte).
_TOP = {
    "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "adaln_single.emb.resolution_embedder.linear_1": "resolution_embedder.mlp.0",
    "adaln_single.emb.resolution_embedder.linear_2": "resolution_embedder.mlp.2",
    "adaln_single.emb.aspect_ratio_embedder.linear_1": "aspect_ratio_embedder.mlp.0",
    "adaln_single.emb.aspect_ratio_embedder.linear_2": "aspect_ratio_embedder.mlp.2",
    "adaln_single.linear": "t_block.1",
    "caption_projection.linear_1": "context_proj.fc1",
    "caption_projection.linear_2": "context_proj.fc2",
    "proj_out": "final_layer.linear",
}


def convert_block(sd: Mapping[str, torch.Tensor], src: str, dst: str, out: dict[str, torch.Tensor]) -> set[str]:
    """Convert the diffusers block at prefix ``src`` into ``out`` at prefix ``dst``; returns the
    source keys used."""
    used: set[str] = set()
    for kind in ("weight", "bias"):
        qkv = [f"{src}.attn1.to_{n}.{kind}" for n in "qkv"]
        out[f"{dst}.attn.qkv.{kind}"] = torch.cat([sd[k] for k in qkv])
        kv = [f"{src}.attn2.to_{n}.{kind}" for n in "kv"]
        if kv[0] in sd:
            out[f"{dst}.cross_attn.kv.{kind}"] = torch.cat([sd[k] for k in kv])
            used.update(kv)
        used.update(qkv)
        for a, b in _BLOCK.items():
            if f"{src}.{a}.{kind}" in sd:
                out[f"{dst}.{b}.{kind}"] = sd[f"{src}.{a}.{kind}"]
                used.add(f"{src}.{a}.{kind}")
    out[f"{dst}.scale_shift_table"] = sd[f"{src}.scale_shift_table"]
    used.add(f"{src}.scale_shift_table")
    return used


def convert_common(sd: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor]) -> set[str]:
    """Patch embedding, embedders, caption projection, final layer (PixArt and Latte)."""
    used = {"pos_embed.proj.weight", "pos_embed.proj.bias", "scale_shift_table"}
    out["x_embedder.proj.weight"] = sd["pos_embed.proj.weight"].unsqueeze(2)  # Conv2d → Conv3d, pt = 1
    out["x_embedder.proj.bias"] = sd["pos_embed.proj.bias"]
    out["final_layer.scale_shift_table"] = sd["scale_shift_table"]
    for a, b in _TOP.items():
        for kind in ("weight", "bias"):
            if f"{a}.{kind}" in sd:
                out[f"{b}.{kind}"] = sd[f"{a}.{kind}"]
                used.add(f"{a}.{kind}")
    return used


def check_all_used(sd: Mapping[str, torch.Tensor], used: set[str], source: str) -> None:
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"{source}: {len(left)} weights have no place in STDiT, e.g. {left[:5]}")


def convert_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PixArt-α diffusers state dict → STDiT keys (every source key is used or this raises)."""
    out: dict[str, torch.Tensor] = {}
    used = convert_common(sd, out)
    depth = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    for i in range(depth):
        used |= convert_block(sd, f"transformer_blocks.{i}", f"blocks.{i}", out)
    check_all_used(sd, used, "PixArtTransformer2DModel")
    return out


def check_config(config: Mapping[str, Any], source: str) -> None:
    """Refuse diffusers options STDiT does not implement (rather than load a different model)."""
    expected = {"norm_type": "ada_norm_single", "activation_fn": "gelu-approximate", "attention_bias": True,
                "norm_elementwise_affine": False, "norm_eps": 1e-6}
    for key, value in expected.items():
        if key in config and config[key] != value:
            raise ValueError(f"{source}: {key}={config[key]!r} is not supported (STDiT implements {value!r})")
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    if config.get("cross_attention_dim") not in (None, hidden):
        raise ValueError(f"{source}: cross_attention_dim={config['cross_attention_dim']} must equal the width {hidden}")


def common_kwargs(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    check_config(config, source)
    in_ch = config["in_channels"]
    out_ch = config.get("out_channels") or in_ch
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"{source}: out_channels={out_ch} must be in_channels ({in_ch}) or twice it (learned sigma)")
    sample, patch = config["sample_size"], config["patch_size"]
    return dict(
        in_channels=in_ch, pred_sigma=out_ch == 2 * in_ch, patch_size=(1, patch, patch),
        hidden_size=config["num_attention_heads"] * config["attention_head_dim"], depth=config["num_layers"],
        num_heads=config["num_attention_heads"], context_dim=config["caption_channels"],
        base_size=sample // patch,
    )


def stdit_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """STDiT constructor arguments equivalent to a ``PixArtTransformer2DModel`` config."""
    kwargs = common_kwargs(config, "PixArtTransformer2DModel")
    sample = config["sample_size"]
    scale = config.get("interpolation_scale")
    size_cond = config.get("use_additional_conditions")
    return dict(kwargs, temporal="none", temporal_position="none",
                interpolation_scale=float(scale if scale is not None else max(sample // 64, 1)),
                size_conditioning=bool(sample == 128 if size_cond is None else size_cond))
