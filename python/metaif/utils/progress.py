"""Progress of long stages, for a person at a terminal and for a log file alike.

:func:`stage` opens one: a tqdm bar when stderr is a terminal; otherwise (a log file, a
batch scheduler, ``nohup``) one line when a stage of at least ``LINE_MIN_S`` seconds ends and a
heartbeat line whenever ``HEARTBEAT_S`` seconds (``METAIF_HEARTBEAT``, default 30) passed without a
line: the open stages, outermost first, with the innermost one's count, its last figures (loss,
residual), the elapsed time and an estimate of the remaining time. A stage opened with
``disable=None`` shows only inside a shown stage, so a solver deep in the library reports where a
command asked for progress and stays silent where a library user did not.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["HEARTBEAT_S", "Progress", "stage"]

#: seconds without a line after which the open stages are reported (at most one line per period)
HEARTBEAT_S = float(os.environ.get("METAIF_HEARTBEAT", "30"))
#: stages shorter than this end without a line of their own
LINE_MIN_S = 2.0

_open: list[Progress] = []  # the shown stages, outermost first
_lock = threading.RLock()
_last_line = [time.monotonic()]
_heartbeat: list[threading.Thread] = []


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _emit(text: str) -> None:
    with _lock:
        print(f"[metaif {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
        _last_line[0] = time.monotonic()


def _beat() -> None:
    while True:
        poll = min(0.25, HEARTBEAT_S / 10)
        time.sleep(poll)
        with _lock:
            logged = [s for s in _open if s.logged]
            # a poll early rather than late: lines between HEARTBEAT_S - poll and HEARTBEAT_S apart
            if logged and time.monotonic() - _last_line[0] >= HEARTBEAT_S - poll:
                _emit(" › ".join(s.desc for s in logged[:-1]) + (" › " if len(logged) > 1 else "")
                      + logged[-1].status())


class Progress:
    """A shown (or hidden) stage with the part of tqdm's interface metaif uses: iteration,
    :meth:`update`, :meth:`set_postfix`, :meth:`close`, and use as a context manager."""

    def __init__(self, iterable: Iterable | None, desc: str, total: int | None, initial: int, shown: bool,
                 leave: bool, bar: bool = True, cap: bool = False) -> None:
        self.iterable, self.desc, self.n, self.initial, self.cap = iterable, desc, initial, initial, cap
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.shown, self.postfix, self.start, self.closed = shown, {}, time.monotonic(), False
        self.bar, self.logged = None, False
        if shown:
            if sys.stderr.isatty():
                self.bar = tqdm(total=self.total, initial=initial, desc=desc, leave=leave) if bar else None
            else:
                self.logged = True
                if not _heartbeat:
                    _heartbeat.append(threading.Thread(target=_beat, name="metaif-heartbeat", daemon=True))
                    _heartbeat[0].start()
            with _lock:
                _open.append(self)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type | None, *exc: Any) -> None:
        self.close(None if kind is None else kind.__name__)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None and not self.closed:
            self.bar.update(n)

    def set_postfix(self, **figures: Any) -> None:
        """The stage's latest figures (``loss="0.36"``, ``residual="2e-4"``), shown with its count."""
        self.postfix = figures
        if self.bar is not None and not self.closed:
            self.bar.set_postfix(**figures)

    def status(self, done: bool = False, error: str | None = None) -> str:
        """``desc: n/total, figures, elapsed[, remaining]`` (at the end ``desc: done ...``, or
        ``desc: stopped by <error> ...``)."""
        elapsed = time.monotonic() - self.start
        parts = [f"{self.n}/{self.total}"] if self.total is not None else [f"{self.n}"] if self.n else []
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        if done:
            ended = "done" if error is None else f"stopped by {error}"
            return f"{self.desc}: {ended}" + "".join(f", {part}" for part in parts) + f" in {_duration(elapsed)}"
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total is not None and self.n > self.initial:
            rate = elapsed / (self.n - self.initial)
            left = _duration(rate * max(self.total - self.n, 0))
            parts.append(f"at most ~{left} left" if self.cap else f"~{left} left")
        return f"{self.desc}: " + ", ".join(parts)

    def close(self, error: str | None = None) -> None:
        """End the stage (``error``: the name of the exception that ended it)."""
        if self.closed:
            return
        self.closed = True
        if not self.shown:
            return
        with _lock:
            _open.remove(self)
            if self.bar is not None:
                self.bar.close()
            elif self.logged and time.monotonic() - self.start >= LINE_MIN_S:
                _emit(self.status(done=True, error=error))


def stage(iterable: Iterable | None = None, *, desc: str, total: int | None = None, initial: int = 0,
          disable: bool | None = False, leave: bool = False, bar: bool = True, cap: bool = False) -> Progress:
    """A stage over ``iterable`` (or of ``total`` steps counted by :meth:`Progress.update`).
    ``disable=None``: shown only inside a shown stage (a library routine that reports to a command);
    ``bar=False``: no bar on a terminal (a whole command, whose inner stages have theirs), lines in a log;
    ``cap``: ``total`` is a cap the stage may stop before (an iterative solve), so the time left is a bound."""
    shown = bool(_open) if disable is None else not disable
    return Progress(iterable, desc, total, initial, shown, leave, bar, cap)
