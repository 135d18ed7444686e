"""ImageNet DiT (Peebles & Xie 2023) → :class:`lvdm.models.dit.DiT` (class-conditional, ``adaln``).

Two layouts of the same weights:

* facebookresearch/DiT's ``DiT-XL-2-256x256.pt`` / ``DiT-XL-2-512x512.pt`` (a plain state dict, or a
  training checkpoint's ``ema`` / ``model``): lvdm's names except ``blocks.i.attn`` →
  ``blocks.i.attns.0``, the 2D patch convolution (→ 3D, ``pt = 1``) and the stored ``pos_embed``,
  which lvdm computes (``position="sincos_2d"``) and checks against it;
* diffusers' ``DiTTransformer2DModel`` (``facebook/DiT-XL-2-256``'s ``transformer/``): q/k/v are fused,
  ``proj_out_1`` / ``proj_out_2`` are the final modulation / projection, and every block holds a copy
  of the timestep and class embedders, which must be equal (lvdm's DiT has one; the published folders
  hold copies of the original's). diffusers codes the timestep with ``downscale_freq_shift=1`` and
  normalises before the MLP with ``eps=norm_eps`` (1e-5 by default; lvdm: 1e-6): the first is
  reproduced (``timestep_freq_shift=1``), the second changes outputs by ~1e-6 relative.

Both keep the learned variance (``out_channels = 2 · in_channels``); lvdm's samplers use the ε half
(:class:`lvdm.diffusion.guidance.ClassGuidedDenoiser`), as diffusers' ``DiTPipeline`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from lvdm.models.dit import SIZES, DiT
from lvdm.models.stdit import sincos_2d


def _heads(hidden: int, num_heads: Optional[int], source: str) -> int:
    """The DiT paper's head count for a width (S, B, L, XL), unless given."""
    if num_heads:
        return num_heads
    by_width = {width: heads for _, width, heads in SIZES.values()}
    if hidden not in by_width:
        raise ValueError(f"{source}: width {hidden} is none of the DiT paper's sizes {sorted(by_width)}; "
                         "give num_heads")
    return by_width[hidden]


def _kwargs(sd: Mapping[str, torch.Tensor], patch_key: str, out_key: str, label_key: str, depth: int,
            num_heads: int, freq_shift: float) -> dict[str, Any]:
    hidden, in_channels, patch = sd[patch_key].shape[0], sd[patch_key].shape[1], sd[patch_key].shape[-1]
    return dict(in_channels=in_channels, out_channels=sd[out_key].shape[0] // (patch * patch), patch_size=patch,
                hidden_size=hidden, depth=depth, num_heads=num_heads, num_classes=sd[label_key].shape[0] - 1,
                conditioning="adaln", layout="full", position="sincos_2d", timestep_freq_shift=freq_shift)


def _depth(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k.split(".")[1] for k in sd if k.startswith(prefix)})


def facebook_kwargs(sd: Mapping[str, torch.Tensor], num_heads: Optional[int] = None,
                    source: str = "checkpoint") -> dict[str, Any]:
    """DiT arguments of a facebookresearch state dict (head count by width unless given)."""
    if "x_embedder.proj.weight" not in sd or "y_embedder.embedding_table.weight" not in sd:
        raise ValueError(f"{source}: not a class-conditional DiT checkpoint (no x_embedder / y_embedder weights)")
    hidden = sd["x_embedder.proj.weight"].shape[0]
    return _kwargs(sd, "x_embedder.proj.weight", "final_layer.linear.weight", "y_embedder.embedding_table.weight",
                   _depth(sd, "blocks."), _heads(hidden, num_heads, source), 0.0)


def convert_facebook(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """facebookresearch DiT keys → lvdm DiT keys; the stored ``pos_embed`` is checked and dropped."""
    out = {}
    for key, value in sd.items():
        if key == "pos_embed":
            _check_positions(value, sd["x_embedder.proj.weight"].shape[0], source)
            continue
        if key == "x_embedder.proj.weight":
            value = value.unsqueeze(2)
        out[key.replace(".attn.", ".attns.0.", 1) if key.startswith("blocks.") else key] = value
    return out


def _check_positions(stored: torch.Tensor, hidden: int, source: str) -> None:
    side = round(stored.shape[-2] ** 0.5)
    diff = (stored.reshape(side * side, hidden).float() - sincos_2d(hidden, side, side, None, 1.0)).abs().max()
    if diff > 1e-4:
        raise ValueError(f"{source}: the stored pos_embed differs from the DiT paper's 2D sin-cos code by "
                         f"{diff.item():.3g}; not an ImageNet DiT layout lvdm reproduces")


#: diffusers block leaf → lvdm block leaf (q/k/v fused separately).
_BLOCK = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "attns.0.proj", "ff.net.0.proj": "mlp.fc1",
          "ff.net.2": "mlp.fc2"}
_EMB = {"timestep_embedder.linear_1": "t_embedder.mlp.0", "timestep_embedder.linear_2": "t_embedder.mlp.2",
        "class_embedder.embedding_table": "y_embedder.embedding_table"}
_TOP = {"proj_out_1": "final_layer.adaLN_modulation.1", "proj_out_2": "final_layer.linear"}


def diffusers_kwargs(config: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """DiT arguments of a ``DiTTransformer2DModel`` (config + state dict)."""
    if config.get("activation_fn", "gelu-approximate") != "gelu-approximate" or not config.get("attention_bias", True):
        raise ValueError("DiTTransformer2DModel: only activation_fn='gelu-approximate' with attention biases "
                         "is supported (the published DiT)")
    return _kwargs(sd, "pos_embed.proj.weight", "proj_out_2.weight",
                   "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight",
                   config["num_layers"], config["num_attention_heads"], 1.0)


def convert_diffusers(sd: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """``DiTTransformer2DModel`` keys → lvdm DiT keys; every source key is used or this raises."""
    out = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"].unsqueeze(2),
           "x_embedder.proj.bias": sd["pos_embed.proj.bias"]}
    used = {"pos_embed.proj.weight", "pos_embed.proj.bias"}
    for kind in ("weight", "bias"):
        for a, b in _TOP.items():
            out[f"{b}.{kind}"] = sd[f"{a}.{kind}"]
            used.add(f"{a}.{kind}")
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"blocks.{i}"
        for kind in ("weight", "bias"):
            qkv = [f"{src}.attn1.to_{n}.{kind}" for n in "qkv"]
            out[f"{dst}.attns.0.qkv.{kind}"] = torch.cat([sd[k] for k in qkv])
            used.update(qkv)
            for a, b in _BLOCK.items():
                out[f"{dst}.{b}.{kind}"] = sd[f"{src}.{a}.{kind}"]
                used.add(f"{src}.{a}.{kind}")
        used |= _shared_embedders(sd, src, out)
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"DiTTransformer2DModel: {len(left)} weights have no place in lvdm's DiT, e.g. {left[:5]}")
    return out


def _shared_embedders(sd: Mapping[str, torch.Tensor], src: str, out: dict[str, torch.Tensor]) -> set[str]:
    """Block ``src``'s timestep / class embedder weights: the first block's become lvdm's; every
    other block's must equal them."""
    used = set()
    for leaf, dst in _EMB.items():
        for kind in ("weight", "bias"):
            key = f"{src}.norm1.emb.{leaf}.{kind}"
            if key not in sd:
                continue
            used.add(key)
            if f"{dst}.{kind}" not in out:
                out[f"{dst}.{kind}"] = sd[key]
            elif not torch.equal(out[f"{dst}.{kind}"], sd[key]):
                raise ValueError(f"DiTTransformer2DModel: {key} differs from block 0's; lvdm's DiT shares one "
                                 "timestep / class embedder (the published DiT folders hold equal copies)")
    return used


def read_diffusers(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of a local ``DiTTransformer2DModel`` folder or ``DiTPipeline`` folder
    (its ``transformer/``), read by diffusers' own (safetensors) loader."""
    from diffusers import DiTTransformer2DModel

    folder = Path(path) / "transformer" if (Path(path) / "transformer" / "config.json").is_file() else Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist: not a diffusers DiT folder")
    name = json.loads(config_file.read_text()).get("_class_name")
    if name not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise ValueError(f"{folder}: a {name!r} model, not a DiTTransformer2DModel")
    model = DiTTransformer2DModel.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
    return dict(model.config), model.state_dict()


def load_facebook(path: str, num_heads: Optional[int] = None) -> DiT:
    """An lvdm DiT with the weights of a facebookresearch DiT file (``.pt``, read weights-only)."""
    from lvdm.checkpoints.load import torch_load
    from lvdm.models.convert.opensora import unwrap

    sd = unwrap(torch_load(path), path)
    model = DiT(**facebook_kwargs(sd, num_heads, path))
    model.load_state_dict(convert_facebook(sd, path), strict=True)
    return model


def load_diffusers(path: str) -> DiT:
    """An lvdm DiT with the weights of a local diffusers ``DiTTransformer2DModel`` / ``DiTPipeline`` folder."""
    config, sd = read_diffusers(path)
    model = DiT(**diffusers_kwargs(config, sd))
    model.load_state_dict(convert_diffusers(sd, config["num_layers"]), strict=True)
    return model
