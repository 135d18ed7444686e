"""Where a curation model comes from: a local folder or file, or a hub id found in the local
cache, checked before any sample is read.

A model stage must fail at once, naming what is missing, rather than on every sample (or after
minutes of hub retries without a network). A local path that does not exist fails here without
touching the hub; a hub id already in the cache is loaded from it with no network at all; an id
not in the cache fails at once when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, and
otherwise after one bounded request to the hub if the hub cannot be reached.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["LoadedPerWorker", "hub_offline", "locate_model", "locate_file"]

#: Seconds the one reachability request to the hub may take.
HUB_TIMEOUT = 10.0
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def hub_offline() -> bool:
    """Whether the environment asks for no hub traffic (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.lower().endswith(_FILE_SUFFIXES)


def _reach(repo_id: str, what: str) -> None:
    """One bounded request: the id exists and the hub answers, or a one-line error."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT)
    except Exception as exc:  # no network, DNS, 401/404: all mean the model cannot be fetched
        raise FileNotFoundError(f"{what} {repo_id!r} is not a local path nor in the hub cache, and the hub "
                                f"cannot give it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                f"give a local folder or download it first") from None


def _not_cached(name: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} {name!r} is not a local path nor in the hub cache, and the hub is offline "
                             f"(HF_HUB_OFFLINE): give a local folder or download it first")


def locate_model(name: str, what: str) -> str:
    """A ``from_pretrained`` location for ``name``: an existing local folder, the cached snapshot
    folder of a hub id (no network needed), or the hub id itself once the hub answered for it.

    Raises:
        FileNotFoundError: naming ``what`` and ``name``: a local path that does not exist, or a
            hub id that is not cached while offline or unreachable.
    """
    from huggingface_hub import snapshot_download

    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if _looks_local(name) or os.path.exists(expanded):
        state = "is not a folder" if os.path.exists(expanded) else "does not exist"
        raise FileNotFoundError(f"{what} {expanded!r} {state}")
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not in the cache (or not a valid id): the checks below say which
        pass
    if hub_offline():
        raise _not_cached(name, what)
    _reach(name, what)
    return name


def locate_file(name: str, filename: Optional[str], what: str) -> str:
    """A local file: ``name`` itself, or ``filename`` of hub repo ``name`` (from the cache when
    it is there, else downloaded after the hub answered).

    Raises:
        FileNotFoundError: naming ``what`` and the path or repo: a missing local file, a repo
            without ``filename``, or a repo file not cached while offline or unreachable.
    """
    from huggingface_hub import hf_hub_download

    expanded = os.path.expanduser(name)
    if os.path.isfile(expanded):
        return expanded
    if _looks_local(name) or os.path.exists(expanded) or filename is None:
        state = "is not a file" if os.path.exists(expanded) else "does not exist"
        hint = "" if filename is not None or _looks_local(name) else " (for a hub repo, also give its filename)"
        raise FileNotFoundError(f"{what} {expanded!r} {state}{hint}")
    try:
        return hf_hub_download(name, filename, local_files_only=True)
    except Exception:
        pass
    if hub_offline():
        raise _not_cached(f"{name}/{filename}", what)
    _reach(name, what)
    return hf_hub_download(name, filename)


class LoadedPerWorker:
    """A stage part whose model loads on first use (:meth:`load`, before any sample is read)
    and again in each worker process: pickling to a worker drops it. Subclasses build the
    model in :meth:`_build`; ``self._load()`` gives it, loading it when needed."""

    _loaded = None

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None}

    def load(self) -> None:
        self._load()

    def _load(self):
        if self._loaded is None:
            self._loaded = self._build()
        return self._loaded

    def _build(self):
        raise NotImplementedError
