"""LoRA files of other tools: the layouts lvdm writes and reads, and the module names they use.

Three layouts (each a ``.safetensors`` of ``A [rank, in]`` / ``B [out, rank]`` pairs; the update of a
linear is ``(alpha / rank) · B A``):

* ``diffusers``: ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``, rank and alpha in the
  metadata (``lora_adapter_metadata``, diffusers' ``LoraConfig`` fields prefixed ``transformer.``).
  ``<module>`` is the diffusers model's name where lvdm's backbone wraps a diffusers model
  (:class:`~lvdm.models.diffusers_adapter.WanBackbone`, :class:`~lvdm.models.diffusers_adapter.LTXBackbone`:
  the ``transformer.`` wrapper is dropped) or was converted from one (HunyuanVideo's
  :class:`~lvdm.models.mmdit.MMDiT`: a fused ``qkv`` is written as ``to_q`` / ``to_k`` / ``to_v``,
  the same A with B's rows split, exactly), else lvdm's own module name (a diffusers model does
  not load such a file).
* ``original`` (what ComfyUI and the original repositories read):
  ``diffusion_model.<original module>.lora_A.weight`` / ``lora_B.weight`` / ``.alpha``, with the
  original model's module names (:func:`original_names`: Wan 2.1, HunyuanVideo, Open-Sora
  STDiT / STDiT3). Where the original fuses what lvdm fuses too (HunyuanVideo's
  ``img_attn_qkv`` and ``linear1``, Open-Sora's ``qkv`` / ``kv``) the pair maps as it is.
* ``kohya`` (read only; musubi-tuner and kohya's trainers): ``lora_unet_<module with _ for .>``
  ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; the underscored names are resolved
  against the original, diffusers and lvdm names of the model.

Separate projections of a file that lvdm fuses into one linear (diffusers' HunyuanVideo ``to_q`` /
``to_k`` / ``to_v``) are read into it exactly: A stacked and B block-diagonal, or one A with B's
rows stacked when they share A (a file split from a fused pair).

:func:`read_lora_file` turns any of them into ``{lvdm module: (A, B, scale)}`` for a backbone;
:func:`merge_lora_file` adds that update to the weights (sampling) and :func:`load_into_adapter`
puts it into the peft adapter of a LoRA run (continued training). A key of the file that no
module of the backbone takes is an error listing such keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from lvdm.finetune.lora import ADAPTER_NAME, is_adapter_key, linear_names, lora_layers

Layout = Literal["diffusers", "original"]
PREFIX = {"diffusers": "transformer.", "original": "diffusion_model.", "kohya": "lora_unet_"}
#: key suffix → (what it holds, the A/B role)
_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_down.weight": "A", ".lora_up.weight": "B",
             ".alpha": "alpha"}

# lvdm name → original name rules, applied in order to each linear's name (first full match wins)
_WAN = (  # diffusers' Wan names (inside WanBackbone.transformer) → the Wan repository's (Wan-Video/Wan2.1 model.py)
    (r"blocks\.(\d+)\.attn1\.to_(q|k|v)", r"blocks.\1.self_attn.\2"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0", r"blocks.\1.self_attn.o"),
    (r"blocks\.(\d+)\.attn2\.to_(q|k|v)", r"blocks.\1.cross_attn.\2"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0", r"blocks.\1.cross_attn.o"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj", r"blocks.\1.ffn.0"),
    (r"blocks\.(\d+)\.ffn\.net\.2", r"blocks.\1.ffn.2"),
    (r"condition_embedder\.time_embedder\.linear_(1|2)", lambda m: f"time_embedding.{2 * int(m[1]) - 2}"),
    (r"condition_embedder\.text_embedder\.linear_(1|2)", lambda m: f"text_embedding.{2 * int(m[1]) - 2}"),
    (r"condition_embedder\.time_proj", "time_projection.1"),
    (r"proj_out", "head.head"),
)
_HUNYUAN = (  # lvdm's MMDiT → Tencent HunyuanVideo's (hyvideo/modules/models.py, token_refiner.py)
    (r"double_blocks\.(\d+)\.(video|text)\.(qkv|proj)",
     lambda m: f"double_blocks.{m[1]}.{'img' if m[2] == 'video' else 'txt'}_attn_{m[3]}"),
    (r"double_blocks\.(\d+)\.(video|text)\.mlp\.(fc1|fc2)",
     lambda m: f"double_blocks.{m[1]}.{'img' if m[2] == 'video' else 'txt'}_mlp.{m[3]}"),
    (r"double_blocks\.(\d+)\.(video|text)\.adaLN_modulation\.1",
     lambda m: f"double_blocks.{m[1]}.{'img' if m[2] == 'video' else 'txt'}_mod.linear"),
    (r"single_blocks\.(\d+)\.(linear1|linear2)", r"single_blocks.\1.\2"),
    (r"single_blocks\.(\d+)\.adaLN_modulation\.1", r"single_blocks.\1.modulation.linear"),
    (r"context_embedder\.blocks\.(\d+)\.attn\.(qkv|proj)", r"txt_in.individual_token_refiner.blocks.\1.self_attn_\2"),
    (r"context_embedder\.blocks\.(\d+)\.(mlp\.fc1|mlp\.fc2|adaLN_modulation\.1)",
     r"txt_in.individual_token_refiner.blocks.\1.\2"),
    (r"context_embedder\.t_embedder\.mlp\.(0|2)", r"txt_in.t_embedder.mlp.\1"),
    (r"context_embedder\.c_embedder\.fc(1|2)", r"txt_in.c_embedder.linear_\1"),
    (r"context_embedder\.proj_in", "txt_in.input_embedder"),
    (r"t_embedder\.mlp\.(0|2)", r"time_in.mlp.\1"),
    (r"guidance_embedder\.mlp\.(0|2)", r"guidance_in.mlp.\1"),
    (r"pooled_text_embedder\.fc1", "vector_in.in_layer"),
    (r"pooled_text_embedder\.fc2", "vector_in.out_layer"),
)
_OPENSORA = (  # lvdm's STDiT → Open-Sora's (the inverse of lvdm.models.convert.opensora's renames)
    (r"((temporal_)?blocks\.\d+\.cross_attn)\.(q|kv)", r"\1.\3_linear"),
    (r"context_proj\.(.+)", r"y_embedder.y_proj.\1"),
    (r"(.+)", r"\1"),
)


class LoraPair(NamedTuple):
    """One linear's update ``scale · B A``: ``A [rank, in]``, ``B [out, rank]``, ``scale = alpha / rank``."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float


def base_linears(backbone: nn.Module) -> list[str]:
    """The names of the linears of ``backbone`` as before :func:`~lvdm.finetune.lora.apply_lora`
    (a peft-wrapped linear by its own name, its adapter layers left out)."""
    return [name.removesuffix(".base_layer") for name in linear_names(backbone) if not is_adapter_key(name + ".")]


def _apply_rules(name: str, rules) -> str | None:
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, name)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return None


def wraps_diffusers(backbone: nn.Module) -> bool:
    """Whether the backbone wraps a diffusers transformer (whose names are diffusers')."""
    from lvdm.models.diffusers_adapter import _DiffusersBackbone

    return isinstance(backbone, _DiffusersBackbone)


def has_diffusers_names(backbone: nn.Module) -> bool:
    """Whether :func:`diffusers_names` gives a diffusers model's names (not lvdm's) for ``backbone``."""
    return wraps_diffusers(backbone) or original_kind(backbone) == "hunyuanvideo"


def diffusers_names(backbone: nn.Module) -> dict[str, str | tuple[str, ...]]:
    """lvdm linear name → the name diffusers' ``load_lora_weights`` targets (``transformer.`` left
    off): a wrapped diffusers model's own names; for HunyuanVideo's MMDiT, diffusers'
    ``HunyuanVideoTransformer3DModel`` names, several for a linear lvdm fuses (``qkv`` →
    ``to_q, to_k, to_v``, concatenated along the outputs; :mod:`lvdm.models.convert.hunyuan`);
    else lvdm's own names (see the module docstring)."""
    linears = base_linears(backbone)
    if wraps_diffusers(backbone):
        return {name: name.removeprefix("transformer.") for name in linears}
    if original_kind(backbone) == "hunyuanvideo":
        from lvdm.models.convert.hunyuan import module_rules

        counts = {"transformer_blocks.": len(backbone.double_blocks), "single_transformer_blocks.": len(backbone.single_blocks),
                  "context_embedder.token_refiner.refiner_blocks.": len(backbone.context_embedder.blocks)}
        rules = module_rules({f"{prefix}{i}.": None for prefix, count in counts.items() for i in range(count)})
        return {name: rules[name] for name in linears if name in rules}
    return {name: name for name in linears}


def original_kind(backbone: nn.Module) -> str | None:
    """Which original model's names :func:`original_names` uses for ``backbone`` (None: none known)."""
    from lvdm.models.diffusers_adapter import WanBackbone
    from lvdm.models.mmdit import MMDiT, TokenRefiner
    from lvdm.models.stdit import STDiT

    if isinstance(backbone, WanBackbone):
        return "wan"
    if isinstance(backbone, MMDiT) and isinstance(backbone.context_embedder, TokenRefiner):
        return "hunyuanvideo"
    if isinstance(backbone, STDiT) and backbone.temporal == "blocks":  # Latte's temporal blocks are diffusers' names
        return "opensora-stdit3" if backbone.temporal_position == "rope" else None
    if isinstance(backbone, STDiT):  # Open-Sora 1.0's STDiT, PixArt-α: Open-Sora's (and PixArt's) own names
        return "opensora"
    return None


def original_names(backbone: nn.Module) -> dict[str, str]:
    """lvdm linear name → the original model's module name, for the linears that have one.

    Raises:
        ValueError: a backbone with no known original layout (naming the ones there are).
    """
    kind = original_kind(backbone)
    if kind is None:
        raise ValueError(f"{type(backbone).__name__} has no original-model LoRA layout; it is known for Wan "
                         "(WanBackbone), HunyuanVideo (MMDiT with a token refiner) and Open-Sora (STDiT 1.0, STDiT3: temporal blocks with RoPE); "
                         "use --format diffusers (lvdm's module names)")
    names = {}
    for name in base_linears(backbone):
        if kind == "wan":
            theirs = _apply_rules(name.removeprefix("transformer."), _WAN)
        elif kind == "hunyuanvideo":
            theirs = _apply_rules(name, _HUNYUAN)
        else:
            theirs = _apply_rules(name, _OPENSORA)
            if theirs is not None and kind == "opensora-stdit3" and theirs.startswith("blocks."):
                theirs = "spatial_" + theirs
        if theirs is not None:
            names[name] = theirs
    return names


def layout_names(backbone: nn.Module, layout: Layout) -> dict[str, tuple[str, ...]]:
    """lvdm linear name → the file's module name(s) (prefix included) in ``layout``; several: the
    linear's output rows in that many parts, all of ``hidden_size`` rows but the last."""
    names = diffusers_names(backbone) if layout == "diffusers" else original_names(backbone)
    return {ours: tuple(PREFIX[layout] + t for t in ((theirs,) if isinstance(theirs, str) else theirs))
            for ours, theirs in names.items()}


def _split(pair: LoraPair, parts: int, width: int) -> list[LoraPair]:
    """A fused linear's pair as ``parts`` pairs of its output rows (the same A): exact."""
    rows = [width] * (parts - 1) + [pair.B.shape[0] - width * (parts - 1)]
    return [LoraPair(pair.A, b, pair.scale) for b in pair.B.split(rows)]


def export_tensors(pairs: Mapping[str, LoraPair], names: nn.Module | Mapping[str, str],
                   layout: Layout) -> dict[str, torch.Tensor]:
    """Write the adapter ``pairs`` (by lvdm module name) in ``layout``: float32 ``lora_A`` /
    ``lora_B`` (and ``.alpha`` = scale · rank in the original layout); a linear lvdm fuses and
    the layout does not is written as one pair per part (the same A, B's rows split).

    Args:
        names: the backbone (its names in ``layout``: :func:`layout_names`), or lvdm name → file
            module name (prefix left off).

    Raises:
        ValueError: an adapted module without a name in ``layout`` (naming it).
    """
    if isinstance(names, nn.Module):
        owner, width, names = type(names).__name__, getattr(names, "hidden_size", 0), layout_names(names, layout)
    else:
        owner, width, names = "the model", 0, {ours: (PREFIX[layout] + theirs,) for ours, theirs in names.items()}
    missing = sorted(set(pairs) - set(names))
    if missing:
        raise ValueError(f"{len(missing)} adapted modules of {owner} have no {layout} name: "
                         f"{missing[:4]}; adapt the blocks' linears (the backbone's lora_targets) to export them")
    out = {}
    for ours, pair in pairs.items():
        parts = names[ours]
        for theirs, part in zip(parts, _split(pair, len(parts), width) if len(parts) > 1 else [pair]):
            out[f"{theirs}.lora_A.weight"] = part.A.float().clone()  # a copy each: safetensors refuses shared A
            out[f"{theirs}.lora_B.weight"] = part.B.float().clone()
            if layout == "original":
                out[f"{theirs}.alpha"] = torch.tensor(part.scale * part.A.shape[0])
    return out


def diffusers_metadata(targets: list[str], rank: int, alpha: float) -> dict[str, str]:
    """The safetensors metadata diffusers reads a LoRA's config from (``lora_adapter_metadata``)."""
    config = {"r": rank, "lora_alpha": alpha, "target_modules": targets, "lora_dropout": 0.0, "bias": "none",
              "use_dora": False}
    return {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()}, sort_keys=True)}


def adapter_pairs(model: nn.Module) -> dict[str, LoraPair]:
    """The peft adapters of ``model`` (after :func:`lvdm.finetune.lora.apply_lora`) as pairs by module name."""
    return {name: LoraPair(layer.lora_A[ADAPTER_NAME].weight.detach(), layer.lora_B[ADAPTER_NAME].weight.detach(),
                           float(layer.scaling[ADAPTER_NAME]))
            for name, layer in lora_layers(model).items()}


# ------------------------------------------------------------------------------------- reading
def _split_key(key: str) -> tuple[str, str, str]:
    """``(layout, module name, role)`` of one key of a LoRA file; ``("", key, "")`` when not a LoRA key."""
    for layout, prefix in PREFIX.items():
        if key.startswith(prefix):
            for suffix, role in _SUFFIXES.items():
                if key.endswith(suffix):
                    return layout, key[len(prefix):-len(suffix)], role
    return "", key, ""


def _unknown(keys: list[str], source: str, what: str, hint: str) -> ValueError:
    shown = ", ".join(keys[:4]) + (f", … ({len(keys)} in all)" if len(keys) > 4 else "")
    return ValueError(f"{source}: {what}: {shown}; {hint}")


def _file_alphas(metadata: Mapping[str, str]) -> tuple[float | None, dict[str, float]]:
    """diffusers' ``lora_alpha`` and ``alpha_pattern`` from ``lora_adapter_metadata`` (None when absent)."""
    config = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    alpha = config.get("transformer.lora_alpha")
    return (None if alpha is None else float(alpha)), dict(config.get("transformer.alpha_pattern") or {})


def parse_lora_tensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                       source: str) -> tuple[str, dict[str, LoraPair]]:
    """A LoRA file's tensors → its layout and ``{module name in the file: pair}``.

    Raises:
        ValueError: keys of no known layout, several layouts in one file, a module with only
            one of ``A`` / ``B``, or mismatched ranks (each naming a few keys).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    layouts, unknown = set(), []
    for key, value in tensors.items():
        layout, name, role = _split_key(key)
        if not layout:
            unknown.append(key)
            continue
        layouts.add(layout)
        parts.setdefault(name, {})[role] = value
    if unknown:
        raise _unknown(sorted(unknown), source, f"{len(unknown)} keys are not LoRA keys lvdm reads",
                       "lvdm reads transformer.* (diffusers), diffusion_model.* (original) and lora_unet_* (kohya) "
                       "keys ending in .lora_A/.lora_B/.lora_down/.lora_up.weight or .alpha")
    if len(layouts) != 1:
        raise ValueError(f"{source}: keys of {len(layouts)} layouts ({sorted(layouts)}) in one file; expected one")
    broken = sorted(n for n, p in parts.items() if not {"A", "B"} <= set(p))
    if broken:
        raise _unknown(broken, source, f"{len(broken)} modules lack lora_A or lora_B", "the file is incomplete")
    default_alpha, pattern = _file_alphas(metadata)
    pairs = {}
    for name, part in parts.items():
        rank = part["A"].shape[0]
        if part["B"].shape[-1] != rank:
            raise ValueError(f"{source}: module {name!r}: lora_A has rank {rank}, lora_B {part['B'].shape[-1]}")
        alpha = part["alpha"].item() if "alpha" in part else pattern.get(name, default_alpha)
        pairs[name] = LoraPair(part["A"], part["B"], 1.0 if alpha is None else float(alpha) / rank)
    return layouts.pop(), pairs


def _candidates(backbone: nn.Module, layout: str) -> dict[str, tuple[str, int, int]]:
    """File module name (prefix left off) → (lvdm linear name, part, parts), for the names a
    ``layout`` file may use (several parts: a linear lvdm fuses, see :func:`diffusers_names`)."""
    def spread(names: Mapping[str, str | tuple[str, ...]]) -> dict[str, tuple[str, int, int]]:
        out = {}
        for ours, theirs in names.items():
            parts = (theirs,) if isinstance(theirs, str) else theirs
            out.update({name: (ours, i, len(parts)) for i, name in enumerate(parts)})
        return out

    ours = spread({name: name for name in base_linears(backbone)})
    diffusers = spread(diffusers_names(backbone))
    original = {} if original_kind(backbone) is None else spread(original_names(backbone))
    if layout == "original":
        return original
    if layout == "diffusers":
        return {**ours, **diffusers}
    return {k.replace(".", "_"): v for names in (ours, diffusers, original) for k, v in names.items()}


def _fuse(parts: list[LoraPair]) -> LoraPair:
    """The pairs of a fused linear's parts (its output rows in order) as one exact pair: the shared A
    and B's rows stacked when every part has the same A and scale (a file split from a fused
    pair), else A stacked and B block-diagonal (rank = the sum of the parts' ranks), scales in B."""
    first = parts[0]
    if all(torch.equal(p.A, first.A) and p.scale == first.scale for p in parts):
        return LoraPair(first.A, torch.cat([p.B for p in parts]), first.scale)
    return LoraPair(torch.cat([p.A for p in parts]), torch.block_diag(*(p.B * p.scale for p in parts)), 1.0)


def resolve(pairs: Mapping[str, LoraPair], backbone: nn.Module, layout: str, source: str) -> dict[str, LoraPair]:
    """The file's pairs by the backbone's module names (the parts of a linear lvdm fuses fused),
    shapes checked.

    Raises:
        ValueError: modules of the file the backbone has no linear for (one line, a few named), a
            fused linear with a part missing, or a pair whose shape is not its linear's.
    """
    names = _candidates(backbone, layout)
    unknown = sorted(name for name in pairs if name not in names)
    if unknown:
        known = sorted(names)[:3]
        raise _unknown([PREFIX[layout] + n for n in unknown], source,
                       f"{len(unknown)} LoRA modules match no linear of {type(backbone).__name__}",
                       f"it names its linears e.g. {known} in this layout; is the LoRA for another model?")
    grouped: dict[str, dict[int, LoraPair]] = {}
    counts: dict[str, int] = {}
    for theirs, pair in pairs.items():
        ours, index, counts[ours] = names[theirs]
        if index in grouped.setdefault(ours, {}):
            raise ValueError(f"{source}: two LoRA modules map onto {ours!r}; the file mixes names of two layouts")
        grouped[ours][index] = pair
    out = {}
    for ours, parts in grouped.items():
        count = counts[ours]
        if len(parts) != count:
            raise ValueError(f"{source}: {ours!r} fuses {count} modules of the file, which holds {len(parts)} of them; "
                             "lvdm adapts the fused linear as a whole")
        out[ours] = _fuse([parts[i] for i in range(count)]) if count > 1 else parts[0]
        linear = backbone.get_submodule(ours)
        linear = getattr(linear, "base_layer", linear)  # a peft-wrapped linear
        want = (linear.out_features, linear.in_features)
        if (out[ours].B.shape[0], out[ours].A.shape[1]) != want:
            raise ValueError(f"{source}: LoRA module for {ours!r} has shape out x in = {out[ours].B.shape[0]} x "
                             f"{out[ours].A.shape[1]}, {type(backbone).__name__}.{ours} is {want[0]} x {want[1]}")
    return out


def read_lora_file(path: str | Path, backbone: nn.Module) -> dict[str, LoraPair]:
    """A LoRA ``.safetensors`` of any layout lvdm reads → ``{backbone module name: pair}``."""
    from safetensors import safe_open

    source = f"LoRA file {str(path)!r}"
    if not str(path).endswith(".safetensors"):
        raise ValueError(f"{source}: lvdm reads LoRA files in .safetensors only")
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    layout, pairs = parse_lora_tensors(tensors, metadata, source)
    return resolve(pairs, backbone, layout, source)


@torch.no_grad()
def merge_lora_file(backbone: nn.Module, path: str | Path, strength: float = 1.0) -> list[str]:
    """Add ``strength ·`` a LoRA file's update to the weights of ``backbone`` (in place, computed in
    float32, stored in each weight's dtype); return the changed module names."""
    pairs = read_lora_file(path, backbone)
    for name, pair in pairs.items():
        weight = backbone.get_submodule(name).weight
        delta = (pair.B.float() @ pair.A.float()).to(weight.device) * (strength * pair.scale)
        weight.copy_((weight.float() + delta).to(weight.dtype))
    return sorted(pairs)


@torch.no_grad()
def load_into_adapter(backbone: nn.Module, path: str | Path) -> list[str]:
    """Set the peft adapters of ``backbone`` to a LoRA file's values (continued training): the file must
    cover exactly the adapted modules, each with the adapter's rank; its ``alpha / rank`` is folded
    into ``B`` where it differs from the adapter's, so the update is the file's."""
    source = f"LoRA file {str(path)!r}"
    layers = lora_layers(backbone)
    pairs = read_lora_file(path, backbone)
    missing, extra = sorted(set(layers) - set(pairs)), sorted(set(pairs) - set(layers))
    if missing or extra:
        raise ValueError(f"{source} adapts other modules than this run (not in the file: {missing[:3]}, not adapted "
                         f"here: {extra[:3]}); give LoRA targets that match the file")
    for name, pair in pairs.items():
        layer = layers[name]
        a, b = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
        if pair.A.shape != a.shape:
            raise ValueError(f"{source}: module {name!r} has rank {pair.A.shape[0]}, this run's LoRA rank is {a.shape[0]}")
        a.copy_(pair.A)
        b.copy_(pair.B.float() * (pair.scale / float(layer.scaling[ADAPTER_NAME])))
    return sorted(pairs)
