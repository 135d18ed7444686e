"""One way to map a function over many items: a local process pool or a Ray cluster.

Every curation stage (ingest, split, score, filter, caption) is "apply a picklable function
to each item"; only *where* it runs changes. :class:`LocalEngine` (the default) needs nothing
but the standard library; :class:`RayEngine` runs the same function on Ray Data, on a local
Ray or a cluster. Both return the results in input order, and an exception raised for one item
becomes that item's :class:`Failure` instead of ending the run: a corrupt video costs one
rejected sample, never a thousand-video job.

The function is shipped to each worker once (a pool initializer; cached per Ray worker), so a callable
object that loads a model lazily on first call keeps it for every later item on that worker.
"""

from __future__ import annotations

import pickle
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

__all__ = ["Engine", "Failure", "LocalEngine", "RayEngine", "StageFailedError", "make_engine", "failed",
           "check_not_all_failed", "print_reasons"]


class StageFailedError(ValueError):
    """A stage in which one step failed on every sample: the run is a failure (non-zero exit),
    not a folder of errors. A ``ValueError`` because the cause is the input or the
    configuration (a model that cannot load, a server that refuses every request), and the CLI
    prints such errors as one line."""


def check_not_all_failed(what: str, errors: Sequence[str]) -> None:
    """Raise :class:`StageFailedError` when ``errors`` (one per sample, empty when the sample
    succeeded) holds an error for every sample, naming ``what`` failed and the first error."""
    if errors and all(errors):
        raise StageFailedError(f"{what} failed on all {len(errors)} samples; the first: {errors[0]}")


@dataclass(frozen=True)
class Failure:
    """The result of an item whose function raised (or whose worker process died).

    Attributes:
        error: ``"ExceptionType: message"`` — short enough for a rejects report.
        details: the formatted traceback, for debugging.
    """

    error: str
    details: str = ""


def failed(result: Any) -> bool:
    """True when ``result`` is a :class:`Failure` (an engine's per-item error)."""
    return isinstance(result, Failure)


def _apply(fn: Callable, item: Any) -> Any:
    try:
        return fn(item)
    except Exception as exc:  # one bad item must not end the run: it becomes its own result
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Failure(f"{type(exc).__name__}: {message}" if message else type(exc).__name__, traceback.format_exc())


class Engine(Protocol):
    """Maps ``fn`` over ``items``; ``results[i]`` is ``fn(items[i])`` or a :class:`Failure`."""

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "") -> list[Any]: ...


# The function installed in each pool worker by its initializer: pickled once per worker, so
# state it builds lazily (a loaded model) survives from one item to the next.
_WORKER_FN: Optional[Callable] = None


def _install(fn: Callable) -> None:
    global _WORKER_FN
    _WORKER_FN = fn


def _apply_installed(item: Any) -> Any:
    assert _WORKER_FN is not None, "worker has no function installed"
    return _apply(_WORKER_FN, item)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc or "items", unit="item", disable=not enabled, dynamic_ncols=True)


class LocalEngine:
    """A process pool on this machine (no Ray needed).

    Args:
        workers: worker processes; ``0`` runs every item in this process (debugging, tiny jobs,
            or a GPU model that should load once).
        start_method: ``spawn`` (default: safe with threads, CUDA and Ray in the parent),
            ``forkserver`` or ``fork``.
        progress: show a progress bar.
    """

    def __init__(self, workers: int = 2, start_method: str = "spawn", progress: bool = True) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.start_method = start_method
        self.progress = progress

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "") -> list[Any]:
        items = list(items)
        if self.workers == 0 or not items:
            results = []
            with _progress(len(items), desc, self.progress) as bar:
                for item in items:
                    results.append(_apply(fn, item))
                    bar.update(1)
            return results
        results: list[Any] = [None] * len(items)
        pending = list(range(len(items)))
        with _progress(len(items), desc, self.progress) as bar:
            # A worker that dies (a decoder segfault, the OOM killer) breaks the whole pool and
            # every item in flight with it. Rerun the unfinished ones once in a fresh pool, then
            # each alone, so the item that kills its process is the only one marked failed.
            for isolate in (False, True):
                pending = self._run_round(fn, items, pending, results, bar, isolate)
                if not pending:
                    break
            for i in pending:
                results[i] = Failure("WorkerDied: the worker process running this item exited abnormally")
                bar.update(1)
        return results

    def _pool(self, fn: Callable, workers: int) -> ProcessPoolExecutor:
        import multiprocessing

        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_install,
            initargs=(fn,),
        )

    def _run_round(self, fn, items, pending, results, bar, isolate: bool) -> list[int]:
        """Runs ``pending`` items (all in one pool, or each alone); returns those a dead worker lost."""
        done: set[int] = set()
        groups = [[i] for i in pending] if isolate else [pending]
        for group in groups:
            try:
                with self._pool(fn, 1 if isolate else min(self.workers, len(group))) as pool:
                    futures = {i: pool.submit(_apply_installed, items[i]) for i in group}
                    for i, future in futures.items():
                        try:
                            results[i] = future.result()
                        except BrokenProcessPool:
                            continue
                        done.add(i)
                        bar.update(1)
            except BrokenProcessPool:
                pass  # raised again on leaving the pool; the lost items are those not done
        return [i for i in pending if i not in done]


# The function a Ray worker process last unpickled, by the digest of its bytes: Ray reuses
# worker processes across tasks (and across stages), so the function, and any model it loaded
# lazily, is unpickled once per worker, not once per batch. One entry, so an old stage's model
# does not stay in memory.
_RAY_FN: dict[str, Callable] = {}


def _ray_batch_fn(fn_bytes: bytes) -> Callable[[dict], dict]:
    import hashlib

    digest = hashlib.sha1(fn_bytes).hexdigest()

    def apply(batch: dict) -> dict:
        if digest not in _RAY_FN:
            _RAY_FN.clear()
            _RAY_FN[digest] = pickle.loads(fn_bytes)
        fn = _RAY_FN[digest]
        results = [pickle.dumps(_apply(fn, pickle.loads(blob))) for blob in batch["item"]]
        return {"index": batch["index"], "result": results}

    return apply


class RayEngine:
    """Ray Data on a local Ray or a cluster.

    Items and results travel pickled (not as Arrow columns), so any picklable value works and a
    result's fields never have to agree on a schema across rows.

    Args:
        ray_address: ``None`` starts a local Ray (unless one is already initialised in this
            process, which is then used); ``auto`` joins the cluster this machine belongs to;
            ``ray://host:10001`` connects a client to a remote cluster.
        workers: concurrent tasks applying the function (``None``: one per CPU Ray reports, at
            most the number of items).
        num_cpus: CPUs each task reserves.
        num_gpus: GPUs each task reserves (e.g. ``1`` for a scorer on ``cuda``).
        batch_size: items per Ray Data batch (per task).
        progress: show a progress bar.
    """

    def __init__(
        self,
        ray_address: Optional[str] = None,
        workers: Optional[int] = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        self.ray_address = ray_address
        self.workers = workers
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.batch_size = batch_size
        self.progress = progress

    def _ray(self):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("the ray engine needs Ray Data: pip install 'lvdm[ray]'") from exc
        if not ray.is_initialized():
            ray.init(address=self.ray_address, log_to_driver=False)
        return ray

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "") -> list[Any]:
        items = list(items)
        if not items:
            return []
        ray = self._ray()
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts items
        rows = [{"index": i, "item": pickle.dumps(item)} for i, item in enumerate(items)]
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = self.workers or max(1, min(cpus // max(1, int(self.num_cpus)), len(items)))
        batch_size = max(1, min(self.batch_size, -(-len(items) // workers)))
        # tasks, not actors: Ray keeps its worker processes between tasks and stages, so
        # imports are paid once per worker, and _RAY_FN keeps the function per worker
        pool = getattr(ray.data, "TaskPoolStrategy", None)
        parallelism = {"compute": pool(size=workers)} if pool else {"concurrency": workers}
        dataset = ray.data.from_items(rows, override_num_blocks=-(-len(items) // batch_size)).map_batches(
            # cloudpickle: a function defined in the user's script (__main__) travels by value
            _ray_batch_fn(ray.cloudpickle.dumps(fn)),
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            **parallelism,
        )
        results: list[Any] = [None] * len(items)
        with _progress(len(items), desc, self.progress) as bar:
            for row in dataset.iter_rows():
                results[int(row["index"])] = pickle.loads(row["result"])
                bar.update(1)
        return results


def make_engine(
    engine: str = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    num_gpus: float = 0,
    progress: bool = True,
) -> Engine:
    """The engine a stage's ``--engine``/``--workers``/``--ray_address`` options name.

    Args:
        engine: ``local`` (a process pool) or ``ray`` (Ray Data).
        workers: processes (local; default 2) or concurrent tasks (ray; default one per CPU).
        ray_address: ``None`` (a local Ray), ``auto`` or ``ray://host:port``; ray only.
        num_gpus: GPUs per Ray task; ray only.
        progress: show a progress bar.
    """
    if engine == "local":
        if ray_address is not None:
            raise ValueError("ray_address applies to engine='ray' only")
        return LocalEngine(workers=2 if workers is None else workers, progress=progress)
    if engine == "ray":
        return RayEngine(ray_address=ray_address, workers=workers, num_gpus=num_gpus, progress=progress)
    raise ValueError(f"unknown engine {engine!r}: choose 'local' or 'ray'")


def print_reasons(reasons: Counter) -> None:
    """Print a stage's reject reasons, most frequent first."""
    for reason, count in reasons.most_common():
        print(f"  rejected {count:>6}  {reason}")
