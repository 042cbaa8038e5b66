"""Stop requests: SIGUSR1/SIGTERM set a flag; the loop finishes its step, checkpoints and exits 0.

SLURM sends SIGUSR1 (`--signal=USR1@120`) or SIGTERM before a job's time runs out; the requeue logic
built on top only needs this process to leave a fresh checkpoint and exit cleanly. A handler only sets
a flag (doing real work inside a signal handler is unsafe); ranks agree on it with one all-reduce, so
every rank stops after the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Context manager that installs the handlers and restores the previous ones on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
