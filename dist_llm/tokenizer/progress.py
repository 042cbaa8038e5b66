"""Progress bars that cost nothing when off: tqdm (about 40 ms to import) is only imported when shown."""

from __future__ import annotations

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
    from tqdm import tqdm

    return tqdm(**tqdm_kwargs)
