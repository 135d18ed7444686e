"""A data stream that cannot fail silently: skips counted by reason, a stream that decodes
(almost) nothing stopped with an error that says why, and SIGTERM honoured while it spins.

Without it a stream where no sample decodes (every clip corrupt, or ``num_frames`` above every
clip) resamples its shards forever at 100% CPU: the trainer never receives a batch, so it never
reaches the point where it would look at a SIGTERM. :class:`DataGuard` watches the stream from
inside (every sample delivered, every sample skipped, every shard opened or unreadable):

* more than ``max_skip_fraction`` of the last ``window`` samples skipped, or of the last
  ``window`` shards opened unreadable (a truncated tar), or none of them holding a sample
  (empty tars: each is counted as ``empty_shard``), or
* no sample delivered for ``max_seconds_without_sample`` seconds (default 120)

raise :class:`DataStreamError` naming the commonest reason (with an example message) and the
shards the skips came from. A SIGTERM or SIGINT received while the stream runs in the main
process stops it with :class:`DataLoaderStopped` at the next sample, skip or shard.

Counts by reason are shared with DataLoader workers (``multiprocessing`` values) and read with
:meth:`DataGuard.counts`; ``lvdm.training.callbacks.data_health.DataHealth`` logs them as metrics and prints
them at the end of fit.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import signal
import threading
import time
from typing import Iterable, Iterator, Optional

__all__ = ["DataGuard", "DataStreamError", "DataLoaderStopped", "REASONS", "skip_reason"]

log = logging.getLogger("lvdm.data")

REASONS = ("corrupt_video", "too_short", "too_large", "missing_entry", "bad_caption", "bad_json", "unreadable_shard",
           "empty_shard", "invalid")


class DataStreamError(RuntimeError):
    """The data stream delivers (almost) no samples: names the commonest reason and the shards."""


class DataLoaderStopped(RuntimeError):
    """A SIGTERM or SIGINT arrived while the data stream was running."""


def skip_reason(exc: BaseException) -> str:
    """The reason (one of :data:`REASONS`) a sample raising ``exc`` is skipped."""
    from lvdm.data.schema import BadMetadataError
    from lvdm.data.video import VideoDecodeError, VideoTooLargeError, VideoTooShortError

    if isinstance(exc, VideoTooShortError):
        return "too_short"
    if isinstance(exc, VideoTooLargeError):
        return "too_large"
    if isinstance(exc, VideoDecodeError):
        return "corrupt_video"
    if isinstance(exc, BadMetadataError):
        return "bad_json"
    if isinstance(exc, KeyError):
        return "missing_entry"
    if isinstance(exc, UnicodeDecodeError):
        return "bad_caption"
    return "invalid"


# --------------------------------------------------------------------------- stop signals
_STOP = threading.Event()
_INSTALLED: dict[int, object] = {}


def _on_signal(signum, frame):
    _STOP.set()
    previous = _INSTALLED.get(signum)
    if callable(previous):
        previous(signum, frame)  # Lightning's own handler (it stops at the next batch, if one comes)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    elif previous == signal.SIG_DFL:
        raise DataLoaderStopped(f"received signal {signal.Signals(signum).name} while reading data")


def _install_stop_handlers() -> None:
    """Chain a handler in front of the current SIGTERM/SIGINT handlers (main thread only: in a
    DataLoader worker or another thread signals are the parent's business)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is _on_signal:
            continue
        try:
            signal.signal(signum, _on_signal)
        except ValueError:  # not the main interpreter
            return
        _INSTALLED[signum] = current


# --------------------------------------------------------------------------- the guard
class DataGuard:
    """Limits on a data stream's failures (see the module docstring) and its skip counts.

    Args:
        max_skip_fraction: largest tolerated fraction of skipped samples among the last
            ``window`` (1.0: never stop for skips).
        window: samples (delivered + skipped) the fraction is taken over; the check starts
            once the window is full.
        max_seconds_without_sample: longest time without delivering a sample (0: no limit); the
            last resort for streams the other limits cannot see (every sample fitting no bucket).
    """

    def __init__(self, max_skip_fraction: float = 0.5, window: int = 200, max_seconds_without_sample: float = 120.0):
        if not 0.0 < max_skip_fraction <= 1.0:
            raise ValueError(f"DataGuard.max_skip_fraction must be in (0, 1], got {max_skip_fraction}")
        if window < 1:
            raise ValueError(f"DataGuard.window must be >= 1, got {window}")
        if max_seconds_without_sample < 0:
            raise ValueError(f"DataGuard.max_seconds_without_sample must be >= 0, got {max_seconds_without_sample}")
        self.max_skip_fraction, self.window = max_skip_fraction, window
        self.max_seconds_without_sample = max_seconds_without_sample
        self._counts: Optional[dict] = None

    def attach(self) -> "DataGuard":
        """Create the counters shared with DataLoader workers (once; called by the data module's
        ``setup``, so that a guard given as a constructor argument stays picklable)."""
        if self._counts is None:
            self._counts = {reason: multiprocessing.Value("q", 0) for reason in REASONS}
        return self

    def counts(self) -> dict[str, int]:
        """Skips by reason in this process and its DataLoader workers since :meth:`attach`."""
        if self._counts is None:
            return dict.fromkeys(REASONS, 0)
        return {reason: int(value.value) for reason, value in self._counts.items()}

    def _count(self, reason: str) -> int:
        """Count one skip for ``reason``; returns the count so far (all processes)."""
        value = self.attach()._counts[reason]
        with value.get_lock():
            value.value += 1
            return int(value.value)

    def watch(self) -> "StreamWatch":
        """A watch for one pipeline (its own window and clock, these counters)."""
        return StreamWatch(self)


class StreamWatch:
    """The events of one data pipeline, checked against its :class:`DataGuard`'s limits. Its
    decoding stage reports samples (:meth:`delivered`, :meth:`skipped`); it is also the
    pipeline's ``webdataset`` error handler (:meth:`shard_error`), shard filter (:meth:`shards`)
    and, right after the tar reader, raw-sample filter (:meth:`samples`, which finds empty shards)."""

    def __init__(self, guard: DataGuard) -> None:
        self.guard = guard
        self._reset()

    def _reset(self) -> None:
        self._recent: collections.deque = collections.deque(maxlen=self.guard.window)  # (reason or None, shard)
        # [None, "unreadable" or "empty"; shard] per shard opened
        self._shards: collections.deque = collections.deque(maxlen=self.guard.window)
        self._shard_samples = 0  # raw samples read from the shard opened last
        self._empty: set = set()  # empty shards already logged
        self._examples: dict[str, str] = {}
        self._last_sample = time.monotonic()

    def __getstate__(self):  # to DataLoader workers: the guard (shared counters), a fresh window
        return {"guard": self.guard}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def start(self) -> None:
        """Call when the pipeline starts iterating: installs the stop handlers (main process),
        starts the clock and a new window."""
        _STOP.clear()
        _install_stop_handlers()
        self._reset()

    def delivered(self, shard: Optional[str] = None) -> None:
        """One sample decoded."""
        self._recent.append((None, shard))
        self._last_sample = time.monotonic()
        self._check_stop()

    def skipped(self, exc: BaseException, key: Optional[str], shard: Optional[str]) -> str:
        """One sample skipped because of ``exc``: counted, logged, checked. Returns the reason.

        The first skip of each reason (in this process and its workers) is a warning; the
        others are logged at DEBUG: a clip drawn again and again (an image in a video recipe)
        would otherwise print a line per draw. The counts by reason are complete."""
        reason = skip_reason(exc)
        first = self.guard._count(reason) == 1
        self._recent.append((reason, shard))
        self._examples.setdefault(reason, f"sample {key!r} in {shard}: {type(exc).__name__}: {exc}")
        log.log(logging.WARNING if first else logging.DEBUG, "skipping sample %r in shard %s: %s: %s (reason: %s)%s",
                key, shard, type(exc).__name__, exc, reason,
                "; further skips for this reason are counted and logged at DEBUG level" if first else "")
        self.check()
        return reason

    def shard_error(self, exc: BaseException) -> bool:
        """``webdataset`` handler for shards that cannot be read (truncated tar, missing file):
        counts ``unreadable_shard``, logs it, checks the limits and continues (``True``).

        webdataset reports a truncated tar twice: from inside the member loop (the message gets
        `` @ <stream>``) and then from the shard loop, with the shard's URL as the last argument;
        only the second, which names the shard, is counted."""
        args = getattr(exc, "args", ())
        if len(args) >= 2 and isinstance(args[-1], str):
            shard = args[-1]
            self.guard._count("unreadable_shard")
            if self._shards:
                self._shards[-1][0] = "unreadable"
            self._examples.setdefault("unreadable_shard", f"shard {shard}: {type(exc).__name__}: {args[0]}")
            log.warning("unreadable shard %s: %s: %s (reason: unreadable_shard)", shard, type(exc).__name__, args[0])
        self.check()
        return True

    def shards(self, urls: Iterable) -> Iterator:
        """Pass a stream of shards through, checking at each; a shard that gave no raw sample
        (see :meth:`samples`) and no read error is counted as ``empty_shard``."""
        for url in urls:
            self._close_shard()
            self.check()
            self._shards.append([None, url.get("url") if isinstance(url, dict) else str(url)])
            self._shard_samples = 0
            yield url
        self._close_shard()

    def samples(self, samples: Iterable) -> Iterator:
        """Pass the raw samples of the tar reader through, noting that the current shard has one."""
        for sample in samples:
            self._shard_samples += 1
            yield sample

    def _close_shard(self) -> None:
        if not self._shards or self._shards[-1][0] is not None or self._shard_samples:
            return
        shard = self._shards[-1][1]
        self._shards[-1][0] = "empty"
        self.guard._count("empty_shard")
        self._examples.setdefault("empty_shard", f"shard {shard} holds no sample")
        if shard not in self._empty:  # once per shard: a resampled stream opens it again and again
            self._empty.add(shard)
            log.warning("empty shard %s: it holds no sample (reason: empty_shard)", shard)

    def _check_stop(self) -> None:
        if _STOP.is_set():
            _STOP.clear()
            raise DataLoaderStopped("stopped by a signal (SIGTERM/SIGINT) while reading data")

    def check(self) -> None:
        """Raise when a limit is passed or a stop signal arrived."""
        self._check_stop()
        guard = self.guard
        bad = sum(reason is not None for reason, _ in self._recent)
        if len(self._recent) == guard.window and guard.max_skip_fraction < 1.0 and bad > guard.max_skip_fraction * guard.window:
            raise DataStreamError(f"{bad} of the last {guard.window} samples were skipped "
                                  f"(more than max_skip_fraction={guard.max_skip_fraction}); " + self._diagnosis())
        failed = collections.Counter(state for state, _ in self._shards if state)
        # unreadable shards count against max_skip_fraction; empty ones (harmless among good
        # ones) only when no shard of the window held a sample
        unreadable = failed["unreadable"] > guard.max_skip_fraction * guard.window
        if len(self._shards) == guard.window and guard.max_skip_fraction < 1.0 and (unreadable or sum(failed.values()) == guard.window):
            example = self._examples.get("unreadable_shard") or self._examples.get("empty_shard")
            why = f"more than max_skip_fraction={guard.max_skip_fraction} unreadable" if unreadable else "none held a sample"
            raise DataStreamError(f"{sum(failed.values())} of the last {guard.window} shards opened could not be read "
                                  f"or held no sample ({failed['unreadable']} unreadable, {failed['empty']} empty: {why}); "
                                  f"e.g. {example}; shards: {self._failed_shards()}")
        waited = time.monotonic() - self._last_sample
        if guard.max_seconds_without_sample and waited > guard.max_seconds_without_sample:
            raise DataStreamError(f"no sample could be read for {waited:.0f} s "
                                  f"(max_seconds_without_sample={guard.max_seconds_without_sample}); " + self._diagnosis())

    def _diagnosis(self) -> str:
        reasons = collections.Counter(r for r, _ in self._recent if r is not None)
        shards = collections.Counter(s for r, s in self._recent if r is not None and s)
        if not reasons:
            if any(state for state, _ in self._shards):
                return f"shards that could not be read or held no sample: {self._failed_shards()}"
            return "no sample was delivered or skipped: are the shards empty?"
        reason, count = reasons.most_common(1)[0]
        names = ", ".join(f"{s} ({n})" for s, n in shards.most_common(5)) or "unknown"
        more = f" and {len(shards) - 5} more" if len(shards) > 5 else ""
        return (f"commonest reason: {reason} ({count}), e.g. {self._examples.get(reason)}; "
                f"all reasons: {dict(reasons)}; shards: {names}{more}")

    def _failed_shards(self) -> str:
        failed = collections.Counter((shard, state) for state, shard in self._shards if state)
        names = ", ".join(f"{shard} ({state}, {n}x)" for (shard, state), n in failed.most_common(5))
        return names + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
