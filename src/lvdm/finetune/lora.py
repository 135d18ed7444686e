"""LoRA adapters on any lvdm backbone, through peft: pure torch, no Lightning.

:func:`apply_lora` wraps the chosen ``nn.Linear`` modules of a model with peft's LoRA layers
(``W x + (alpha / rank) · B A x``) and freezes everything else; :func:`merge_lora` folds them back
into plain ``nn.Linear`` weights. Targets are the backbone's declared ``lora_targets`` (a regular
expression, :class:`lvdm.models.contract.Backbone`) or glob patterns over module names
(``blocks.*.attns.*.qkv``); every pattern must match at least one ``nn.Linear``.

After :func:`apply_lora` an adapted layer ``blocks.0.mlp.fc1`` holds ``base_layer.weight`` (the
frozen weight), ``lora_A.default.weight`` ``[rank, in]`` and ``lora_B.default.weight``
``[out, rank]``; :func:`adapter_state_dict` keeps only the adapter tensors.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from typing import Literal, Sequence

import torch
from torch import nn

#: How the adapter starts: peft's ``default`` (A Kaiming-uniform, B zero: the adapted model starts
#: as the base) or ``gaussian`` (A normal with std 1/rank, B zero). Variants that rewrite the base
#: weights (PiSSA, OLoRA, LoftQ) are left out: an adapter-only checkpoint needs the base unchanged.
LoraInit = Literal["default", "gaussian"]
ADAPTER_NAME = "default"


def _peft():
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA needs peft: pip install 'lvdm[finetune]'") from err
    return peft


def linear_names(model: nn.Module) -> list[str]:
    """The names of every ``nn.Linear`` in ``model`` (what LoRA may adapt)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]


def _available(names: list[str], count: int = 8) -> str:
    shown = ", ".join(names[:count])
    return f"{shown}, … ({len(names)} in all)" if len(names) > count else shown or "(none)"


def find_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    """The names of the ``nn.Linear`` modules of ``model`` that LoRA adapts.

    Args:
        model: the backbone (or any module).
        targets: None: the backbone's declared ``lora_targets`` regular expression (full match);
            a string or a list of strings: glob patterns over module names (``*`` spans dots,
            e.g. ``blocks.*.attns.*.qkv``); an exact name is a pattern too.

    Raises:
        ValueError: a pattern that matches no ``nn.Linear`` (naming the patterns and some
            available names), or a model that declares no ``lora_targets`` when none are given.
    """
    available = linear_names(model)
    if targets is None:
        declared = getattr(model, "lora_targets", None)
        if not declared:
            raise ValueError(f"{type(model).__name__} declares no lora_targets; give LoRA targets as glob patterns, "
                             f"e.g. from its linear modules: {_available(available)}")
        found = [name for name in available if re.fullmatch(declared, name)]
        if not found:
            raise ValueError(f"{type(model).__name__}.lora_targets {declared!r} matches no nn.Linear; available: "
                             f"{_available(available)}")
        return found
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise ValueError("LoRA targets is an empty list; give glob patterns or leave it unset for the backbone's lora_targets")
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in available)]
    if unmatched:
        raise ValueError(f"LoRA target patterns {unmatched} match no nn.Linear of {type(model).__name__} "
                         f"(patterns: {patterns}); available: {_available(available)}")
    return [name for name in available if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets: str | Sequence[str] | None = None, init: LoraInit = "default") -> list[str]:
    """Wrap the target ``nn.Linear`` modules of ``model`` (in place) with LoRA adapters and freeze
    every other parameter of ``model``; return the adapted module names.

    Args:
        model: the backbone (or any module with ``nn.Linear`` layers).
        rank: the adapter rank ``r`` (> 0).
        alpha: the scale numerator: the update is ``(alpha / rank) · B A`` (None: ``rank``, scale 1).
        dropout: dropout on the adapter's input in training.
        targets: see :func:`find_targets`.
        init: :data:`LoraInit`.
    """
    peft = _peft()
    if rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if init not in ("default", "gaussian"):
        raise ValueError(f"LoRA init must be 'default' or 'gaussian', got {init!r}")
    if any(is_adapter_key(name) for name, _ in model.named_parameters()):
        raise ValueError(f"{type(model).__name__} already holds LoRA adapters; merge them first (lvdm.finetune.lora.merge_lora)")
    names = find_targets(model, targets)
    config = peft.LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                        target_modules="|".join(re.escape(n) for n in names),  # peft full-matches a string: exactly these
                        init_lora_weights=True if init == "default" else "gaussian")
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_key(name))
    return names


def is_adapter_key(key: str) -> bool:
    """Whether a parameter / state-dict key belongs to a LoRA adapter (``….lora_A.default.weight``)."""
    return ".lora_A." in key or ".lora_B." in key


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` (keys as in ``model.state_dict()``)."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_key(k)}


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers inside ``model`` by name."""
    layer = _peft().tuners.lora.LoraLayer
    return {name: module for name, module in model.named_modules() if isinstance(module, layer)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter of ``model`` into its base weight and put the plain ``nn.Linear``
    back (in place): the state dict then has the keys of the model before :func:`apply_lora`."""
    for name, layer in lora_layers(model).items():
        layer.merge(adapter_names=[ADAPTER_NAME])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    return model


@torch.no_grad()
def base_fingerprint(model: nn.Module, samples: int = 256) -> str:
    """A short hash of ``model``'s parameters (call it before :func:`apply_lora`): names, shapes and
    up to ``samples`` evenly spaced values of each, rounded to bfloat16, so the same weights give
    the same hash in float32 or bfloat16, on any device, without hashing gigabytes."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        flat = param.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), device=flat.device).long()
        values = flat[index].to(torch.bfloat16).view(torch.int16).cpu()
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]
