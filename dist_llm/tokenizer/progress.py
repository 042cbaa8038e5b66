"""Progress bars that cost nothing when off: tqdm (about 40 ms to import) is only imported when shown."""

from __future__ import annotations

import functools
from typing import Any


class _NoBar:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(enabled: bool, **tqdm_kwargs: Any):
    """A tqdm bar when `enabled`, else a stand-in with the same update/close/context methods."""
    if not enabled:
        return _NoBar()
    return _tqdm_without_monitor()(**tqdm_kwargs)


@functools.cache
def _tqdm_without_monitor() -> type:
    """tqdm without its monitor thread (which only refreshes bars that went quiet; ours update often).

    That thread outlives the bar, and a process with a second thread no longer forks its worker pools
    (dist_llm.data.prepare then spawns them: about a second of re-imports per worker, on every later
    preparation in the process)."""
    from tqdm import tqdm

    return type("QuietTqdm", (tqdm,), {"monitor_interval": 0})
