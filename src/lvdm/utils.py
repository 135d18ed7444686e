"""Small helpers shared across lvdm: dtype names, pretrained locations, writing videos."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

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


def slugify(text: str, max_length: int = 60) -> str:
    """A file-name-safe version of a prompt."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", text.strip().lower()).strip("_")
    return slug[:max_length] or "empty"


def save_videos(
    videos: torch.Tensor, prompts: Sequence[str], out_dir: str | Path, fps: int = 8, start_index: int = 0
) -> list[Path]:
    """Write ``videos`` ``[B, 3, T, H, W]`` in [-1, 1] as ``<out_dir>/<index>_<prompt>.mp4`` and
    append their prompts, in file order, to ``<out_dir>/prompts.txt`` (what ``lvdm eval
    probe`` reads)."""
    from lvdm.data.video import write_mp4

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = ((videos.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # [B, T, H, W, 3]
    paths = []
    with open(out_dir / "prompts.txt", "a") as f:
        for i, (clip, prompt) in enumerate(zip(frames, prompts)):
            path = out_dir / f"{start_index + i:05d}_{slugify(prompt)}.mp4"
            write_mp4(path, clip, fps=fps)
            f.write(prompt.replace("\n", " ") + "\n")
            paths.append(path)
    return paths


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
