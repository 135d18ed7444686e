"""Checkpoints that a second run finds and that a kill cannot truncate.

Lightning's ``ModelCheckpoint`` writes into the logger's ``version_N/checkpoints`` folder, so a
second ``lvdm fit ... --ckpt_path last`` looks in a new, empty ``version_N+1`` and starts again
from step 0 with one warning line. Its checkpoint file is written to a temporary file in
``$TMPDIR`` and moved: when ``$TMPDIR`` is on another filesystem the move is a copy, and a kill
during the copy leaves a truncated ``last.ckpt`` where the previous good one was.

:class:`RunCheckpoint` keeps every checkpoint of a run in one folder,
``<trainer.default_root_dir>/checkpoints`` (whatever the logger's version), writes each file
next to its destination and renames it into place (:class:`AtomicCheckpointIO`), and resolves
``--ckpt_path last`` to the newest *valid* checkpoint of that folder (SLURM's ``hpc_ckpt_N.ckpt``
in ``default_root_dir`` included): a corrupt newest file is passed over with a warning for the
previous valid one, and a folder holding only corrupt files is an error naming them. The
``lvdm`` CLI adds one to every run that configures no ``ModelCheckpoint`` of its own, and on
``--ckpt_path`` logs into the run's existing log folder (:func:`reuse_log_versions`).
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a hidden temporary file in the destination's own folder, ``fsync``, then
    ``os.replace``: the destination holds the old checkpoint or the new one, never a part of one,
    whatever ``$TMPDIR`` is and whenever the process is killed."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote filesystems: Lightning's own (fsspec) writer
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_problem(path: str | Path) -> Optional[str]:
    """Why ``path`` is not a readable checkpoint, or ``None`` when it looks whole.

    A file must be a complete ``torch.save`` zip archive (its central directory is at the end, so
    a truncated file fails here) holding a ``data.pkl``; a DeepSpeed checkpoint directory must hold
    at least one model-states file. Structure only: the tensors are read when Lightning loads it."""
    path = Path(path)
    if path.is_dir():
        return None if any(path.rglob("*model_states.pt")) else "DeepSpeed checkpoint directory without model states"
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(name.endswith("data.pkl") for name in zf.namelist()):
                return "no data.pkl in the archive"
    except (OSError, zipfile.BadZipFile) as err:
        return f"not a complete checkpoint archive ({err})"
    return None


_HPC = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


def resume_candidates(folder: str | Path, root: str | Path | None = None) -> list[Path]:
    """Every checkpoint of a run, newest first: ``*.ckpt`` in ``folder`` and SLURM's
    ``hpc_ckpt_N.ckpt`` in ``root``. Ties in modification time prefer ``last*.ckpt``."""
    found = [p for p in Path(folder).glob("*.ckpt")] if Path(folder).is_dir() else []
    if root is not None and Path(root).is_dir():
        found += [p for p in Path(root).iterdir() if _HPC.match(p.name)]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name.startswith("last")), reverse=True)


def newest_valid_checkpoint(folder: str | Path, root: str | Path | None = None) -> Optional[Path]:
    """The newest checkpoint of :func:`resume_candidates` that :func:`checkpoint_problem` accepts,
    warning about each newer one it passes over; ``None`` when there is none at all.

    Raises:
        RuntimeError: checkpoints exist but none is valid (naming each and its problem).
    """
    candidates = resume_candidates(folder, root)
    problems = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if problems:
                rank_zero_warn(
                    "passing over newer checkpoints that cannot be read: "
                    + "; ".join(f"{p} ({why})" for p, why in problems)
                    + f" — resuming from {path}"
                )
            return path
        problems.append((path, problem))
    if problems:
        raise RuntimeError(
            f"--ckpt_path last: no valid checkpoint in {folder}: "
            + "; ".join(f"{p} ({why})" for p, why in problems)
        )
    return None


_VERSION = re.compile(r"^version_(\d+)$")


def reuse_log_versions(trainer: L.Trainer) -> bool:
    """For a resumed run: point each TensorBoard / CSV logger whose version was not configured
    at the newest ``version_N`` folder it already has, so one run keeps one log folder however
    often it is resumed (Lightning would open ``version_N+1`` each time). Returns whether any
    logger was pointed at an existing folder."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    reused = False
    for logger in trainer.loggers:
        # ``_version`` is what Lightning's ``version`` property fills in lazily when it is None
        if not isinstance(logger, (TensorBoardLogger, CSVLogger)) or logger._version is not None:
            continue
        root = Path(logger.root_dir)
        found = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))] \
            if root.is_dir() else []
        if found:
            logger._version = max(found)
            reused = True
    return reused
