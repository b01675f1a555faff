"""What a person sees while a long step runs: the step named, a spinner (or a
bar) and the time spent, for Verilator builds, Yosys runs, lint and the cosim
plan.

    with step(f"verilator build of {top}"):
        ...
    with step("cosim sim", total=len(items)) as s:
        for item in items:
            ...
            s.advance()

Steps opened from several threads at once share one live display (rich allows
one per console); it goes to stderr, so stdout stays what a command prints for
pipes. Without a terminal on stderr (logs, CI, pytest) a step prints one line
when it starts and one when it ends, and nothing animates. QUATTRO_PROGRESS=0
turns both off.

It lives in fpga_boards because that is the lowest layer allowed rich that both
fpga_boards (Yosys) and cosim (Verilator, lint, make sim) may import.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["Step", "step", "enabled"]

_lock = threading.Lock()
_progress = None          # the shared rich Progress while any step is open
_open = 0                 # steps open in any thread


def enabled() -> bool:
    """False when QUATTRO_PROGRESS is 0/false/no/off."""
    return os.environ.get("QUATTRO_PROGRESS", "1").strip().lower() not in ("0", "false", "no",
                                                                             "off")


def _live() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"


class Step:
    """A running step: `advance(n)` moves its bar (when it has a total)."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        """Move the step's bar by n (nothing without a live display)."""
        if self._progress is not None:
            self._progress.advance(self._task, n)


def _start():
    from rich.console import Console  # noqa: PLC0415 (only with a terminal)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn)
    p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                 MofNCompleteColumn(), TimeElapsedColumn(),
                 console=Console(stderr=True), transient=True,
                 # print()s of other threads go above the display instead of through it
                 redirect_stdout=sys.stdout.isatty(), redirect_stderr=True)
    p.start()
    return p


@contextlib.contextmanager
def step(description: str, *, total: int | None = None) -> Iterator[Step]:
    """Show `description` while the body runs (a bar of `total` units when given)."""
    global _progress, _open
    if not enabled():
        yield Step(None, None)
        return
    if not _live():
        t0 = time.perf_counter()
        print(f"{description} ...", file=sys.stderr, flush=True)
        ok = False
        try:
            yield Step(None, None)
            ok = True
        finally:
            print(f"{description}: {'done' if ok else 'stopped'} after "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        return
    with _lock:
        if _progress is None:
            _progress = _start()
        _open += 1
        progress = _progress
        task = progress.add_task(description, total=total)
    try:
        yield Step(progress, task)
    finally:
        with _lock:
            progress.remove_task(task)
            _open -= 1
            if _open == 0:
                progress.stop()
                _progress = None
