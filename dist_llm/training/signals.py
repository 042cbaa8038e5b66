"""Stop requests: SIGUSR1/SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits 0.

SLURM sends SIGUSR1 (`--signal=USR1@120`) or SIGTERM before a job's time runs out; the requeue logic
built on top only needs this process to leave a fresh checkpoint and exit cleanly. A handler only sets
a flag (doing real work inside a signal handler is unsafe); ranks agree on it with one all-reduce, so
every rank stops after the same step.

Ctrl-C (SIGINT) is a stop request too, so a laptop user who presses it keeps the work since the last
checkpoint; a second Ctrl-C raises KeyboardInterrupt as usual, to abort at once. A process started with
SIGINT ignored (a background job of a non-interactive shell) keeps ignoring it, as Python itself does.

The handlers are installed before the trainer imports torch (catch_stop_signals_early, taken over by
the StopRequest of main()), so a signal that arrives during imports, process-group setup, data
preparation or the first evaluation is remembered and honoured at the first step boundary (before,
it killed the process, or was lost where the launcher ignores it). Only the interpreter's own
start-up, before the first line of dist_llm/train.py, is left uncovered.
Worker processes forked meanwhile (the tokenizer's and the corpus preparation's pools) get the previous
dispositions back through a fork hook: a pool stops its workers with SIGTERM, and a worker that only
set a flag would never exit. They ignore SIGINT: the parent handles Ctrl-C and ends its pools. Spawned
workers start a fresh interpreter and have the defaults anyway.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

_installed: list[StopRequest] = []  # the requests whose handlers are live in this process
_early: list[StopRequest] = []  # at most one: installed by catch_stop_signals_early, not yet taken over


def _restore_in_forked_child() -> None:
    for request in _installed:
        # ValueError: not the child's main thread, where nothing can be set (and nothing was inherited)
        with contextlib.suppress(ValueError):
            request._restore_previous()
            if signal.SIGINT in request._previous:
                # Ctrl-C in a terminal reaches every process of the group. A pool worker killed by it
                # would lose its task and leave the parent waiting forever; the parent decides instead.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
    _installed.clear()


os.register_at_fork(after_in_child=_restore_in_forked_child)


def catch_stop_signals_early() -> None:
    """Install the stop handlers now, before slow imports (torch takes seconds to import), so that a
    stop signal arriving meanwhile is kept instead of killing the process. The next StopRequest
    entered in this process takes over what was caught. Imports only the standard library."""
    if not _early and threading.current_thread() is threading.main_thread():
        _early.append(StopRequest().__enter__())


class StopRequest:
    """Context manager that installs the handlers and restores the previous ones on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            if self.received is not None:  # the second stop request by Ctrl-C: abort now
                if self in _early:
                    # Still importing (torch takes seconds): nothing is written yet, and a
                    # KeyboardInterrupt raised inside an import prints a traceback, or is swallowed.
                    os.write(2, b"\naborted by Ctrl-C before training started\n")
                    os._exit(130)
                raise KeyboardInterrupt
            # os.write, not print: the main thread may be inside a print of its own when this runs.
            os.write(2, b"\nCtrl-C: stopping after this step, with a checkpoint; Ctrl-C again aborts now\n")
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.signals:
                if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # started with Ctrl-C ignored on purpose: leave it so
                self._previous[sig] = signal.signal(sig, self._handle)
            _installed.append(self)
            if _early and _early[0] is not self:
                # Take over from the early handlers (now replaced by ours, with no gap between):
                # the signal they caught, and the dispositions they replaced, which __exit__ restores.
                early = _early.pop()
                self.received = self.received or early.received
                self._previous.update(early._previous)
                _installed.remove(early)
        return self

    def _restore_previous(self) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(sig, previous)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore_previous()
        self._previous.clear()
        if self in _installed:
            _installed.remove(self)
