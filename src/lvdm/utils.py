"""Small helpers shared across lvdm: dtype names, pretrained locations, prompt files, devices,
the CPU thread policy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:  # imported where used: `lvdm` applies the thread policy before torch starts
    import torch

_DTYPES = ("float32", "float16", "bfloat16")


def parse_dtype(name: str) -> "torch.dtype":
    """``"bfloat16"`` → ``torch.bfloat16``; unknown names fail listing the accepted ones."""
    import torch

    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}")
    return getattr(torch, name)


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
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device_async(tensor: "torch.Tensor", device: "torch.device") -> "torch.Tensor":
    """Copy a host tensor to ``device`` without a host sync: a plain ``.to("cuda")`` from
    pageable memory waits for the GPU's queue to drain; a pinned source copies asynchronously."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def nonfinite_tensors(tensors, limit: int = 5) -> list[str]:
    """Names of the first ``limit`` floating-point tensors of a ``{name: tensor}`` mapping that
    hold a NaN or an infinity (an empty list when every value is finite)."""
    import torch

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


#: Environment variables that fix the thread count; torch reads them when it starts.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """What :func:`thread_plan` decided: ``threads`` for torch's intra-op pool (``None``: lvdm
    leaves it alone), the environment variables to set (before torch starts, and for the
    processes it starts) and why."""

    threads: Optional[int]
    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def thread_plan(cores: int, workers: int = 0, env: Mapping[str, str] | None = None, load: float = 0.0) -> ThreadPlan:
    """How many threads torch runs in the main process, and how they wait: a pure function of
    the machine.

    torch's OpenMP threads meet at a barrier after every op, and by default a thread that
    arrives first spins there. When other processes hold the cores, the thread it waits for is
    not scheduled, so each op costs scheduler time slices: a small model ran 5x (idle-ish) to
    40x slower on a busy 2-core machine, far more than the CPU share it lost. So:

    * ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning (unless the user
      set a policy); it has to be in the environment before torch is imported;
    * threads = ``cores`` minus the DataLoader ``workers`` (each runs one thread: PyTorch sets
      it, and lvdm's decoders use one) minus the cores ``load`` already keeps busy, at least 1;
    * a thread count the user set (:data:`THREAD_ENV`) is kept, and ``LVDM_THREADS=off`` turns
      the policy off (torch's own defaults: one spinning thread per core).

    Args:
        cores: CPU cores this process may run on (``os.sched_getaffinity``).
        workers: DataLoader worker processes next to the main one.
        env: the environment (``os.environ``).
        load: cores already busy before this process starts (:func:`busy_cores`).
    """
    env = env or {}
    if env.get("LVDM_THREADS", "").strip().lower() == "off":
        return ThreadPlan(None, {}, "LVDM_THREADS=off: torch's defaults")
    if cores < 1 or workers < 0 or load < 0:
        raise ValueError(f"thread_plan needs cores >= 1, workers >= 0, load >= 0; got {cores}, {workers}, {load}")
    wait = {} if env.get("OMP_WAIT_POLICY", "").strip() else {"OMP_WAIT_POLICY": "PASSIVE"}
    for name in THREAD_ENV:
        value = env.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value!r} is not a positive whole number of threads")
            return ThreadPlan(int(value), wait, f"{name}={value} set in the environment")
    threads = max(1, cores - workers - round(load))
    return ThreadPlan(threads, {**wait, "OMP_NUM_THREADS": str(threads)},
                      f"{cores} cores - {workers} DataLoader workers - {load:.1f} busy")


def busy_cores(seconds: float = 0.1) -> float:
    """Cores the machine keeps busy now: the non-idle share of ``/proc/stat`` over ``seconds``
    times the CPU count (0 where there is no ``/proc/stat``). Not the load average: that one
    lags a minute, so a process started right after another would count the finished one."""
    import time

    def snapshot():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        (total0, idle0), _, (total1, idle1) = snapshot(), time.sleep(seconds), snapshot()
    except OSError:
        return 0.0
    busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
    return max(0.0, busy * (os.cpu_count() or 1))


_APPLIED: list[ThreadPlan] = []  # what apply_thread_policy chose in this process


def apply_thread_policy(workers: int = 0) -> ThreadPlan:
    """Apply :func:`thread_plan` for this machine now: set its environment variables (call it
    before torch is imported for the wait policy to count: ``lvdm`` does, first thing) and,
    when torch is already imported, its thread count. Returns the plan."""
    import sys

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    plan = thread_plan(cores, workers, os.environ, min(busy_cores(), cores))
    os.environ.update(plan.env)
    if plan.threads is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(plan.threads)
    _APPLIED[:] = [plan]
    return plan


def applied_thread_plan() -> ThreadPlan | None:
    """The plan :func:`apply_thread_policy` last applied in this process, or None."""
    return _APPLIED[0] if _APPLIED else None
