"""Small helpers shared across lvdm: dtype names, pretrained locations, prompt files, devices."""

from __future__ import annotations

import os

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` → ``torch.bfloat16``; unknown names fail listing the accepted ones."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def resolve_pretrained(pretrained: str, subfolder: str | None = None) -> str:
    """Checks a ``pretrained`` location before handing it to a ``from_pretrained``.

    An existing directory is a local checkpoint (offline use). A string shaped like a hub id
    (``"org/name"`` or ``"name"``, not starting with ``/``, ``.`` or ``~``) is passed through for
    ``from_pretrained`` to fetch or find in the hub cache. Anything else is a local path that
    does not exist, and fails here naming it instead of deep inside the hub client.
    """
    expanded = os.path.expanduser(pretrained)
    if os.path.isdir(expanded):
        if subfolder and not os.path.isdir(os.path.join(expanded, subfolder)):
            raise FileNotFoundError(
                f"pretrained folder {expanded!r} has no subfolder {subfolder!r}"
            )
        return expanded
    looks_like_path = pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1
    if looks_like_path or os.path.exists(expanded):
        what = "is not a directory" if os.path.exists(expanded) else "does not exist"
        raise FileNotFoundError(f"pretrained path {expanded!r} {what}")
    return pretrained


def read_prompt_file(path: str) -> list[str]:
    """The prompts of a text file, one per line (blank lines skipped).

    ``-`` reads standard input, and pipes work (``--prompt_file <(grep red prompts.txt)``)."""
    import sys

    if path == "-":
        text = sys.stdin.read()
    else:
        if not os.path.exists(path):
            raise FileNotFoundError(f"prompt file {path!r} does not exist")
        if os.path.isdir(path):
            raise IsADirectoryError(f"prompt file {path!r} is a directory")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first GPU when there is one, else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device_async(tensor: "torch.Tensor", device: "torch.device") -> "torch.Tensor":
    """Copy a host tensor to ``device`` without a host sync: a plain ``.to("cuda")`` from
    pageable memory waits for the GPU's queue to drain; a pinned source copies asynchronously."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def nonfinite_tensors(tensors, limit: int = 5) -> list[str]:
    """Names of the first ``limit`` floating-point tensors of a ``{name: tensor}`` mapping that
    hold a NaN or an infinity (an empty list when every value is finite)."""
    bad = []
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def check_finite(tensors, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the offending tensors when any value is NaN or infinite."""
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ValueError(f"{what} holds non-finite (NaN/inf) values in {', '.join(bad)}; refusing to use it")
