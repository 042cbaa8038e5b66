"""Fixed-length training windows over a prepared token file, read through numpy.memmap.

Window i covers tokens [i*T, i*T + T + 1) of the split (T = context_length): x = w[:-1], y = w[1:].
Consecutive windows share one token (the last target of window i is the first input of window i+1),
so the inputs tile the file without overlap and no token is wasted as an input;
len() = (num_tokens - 1) // T. The tail shorter than a window is not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dist_llm.data.meta import content_fingerprint, read_meta
from dist_llm.data.sources import DataError


class MemmapTokens:
    """A prepared split (`train` or `val`) of `data_dir`, opened read-only and shared by all processes."""

    def __init__(self, data_dir: str | Path, split: str, context_length: int,
                 expected_tokenizer_fingerprint: str | None = None) -> None:
        if not isinstance(context_length, int) or context_length < 1:
            raise DataError(f"context_length must be a positive integer, got {context_length!r}")
        self.data_dir = Path(data_dir)
        self.meta: dict[str, Any] = read_meta(self.data_dir)
        self.split = split
        self.context_length = context_length
        prepare_hint = "re-run python -m dist_llm.data.prepare"
        splits = self.meta["splits"]
        if split not in splits:
            raise DataError(f"{self.data_dir}/meta.json has no split {split!r} (it has {sorted(splits)})")
        fingerprint = self.meta["tokenizer_fingerprint"]
        if expected_tokenizer_fingerprint is not None and fingerprint != expected_tokenizer_fingerprint:
            raise DataError(
                f"{self.data_dir} was prepared with tokenizer {fingerprint[:12]}..., but this run uses "
                f"tokenizer {expected_tokenizer_fingerprint[:12]}...; {prepare_hint} with this "
                "run's tokenizer")
        self.path = self.data_dir / splits[split]["file"]
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.num_tokens = int(splits[split]["num_tokens"])
        expected_size = self.num_tokens * self.dtype.itemsize
        actual_size = self.path.stat().st_size if self.path.exists() else None
        if actual_size != expected_size:
            found = "is missing" if actual_size is None else f"has {actual_size} bytes"
            raise DataError(f"{self.path} {found}, but meta.json says {self.num_tokens} {self.dtype.name} "
                            f"tokens = {expected_size} bytes; the file is truncated or from another run: "
                            f"{prepare_hint}")
        if self.num_tokens < context_length + 1:
            raise DataError(
                f"split {split!r} of {self.data_dir} has {self.num_tokens} tokens, fewer than one window of "
                f"context_length + 1 = {context_length + 1}; use a shorter context_length, more data, or "
                "(for val) a larger validation fraction (data.val_fraction in the trainer, --val-fraction "
                "for dist_llm.data.prepare)")
        self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        # Offsets of one window relative to its start, reused by every gather.
        self._offsets = np.arange(context_length + 1, dtype=np.int64)

    @property
    def content_fingerprint(self) -> str:
        """Identifies what these tokens are made of (see dist_llm.data.meta.content_fingerprint)."""
        return content_fingerprint(self.meta, self.split)

    def __len__(self) -> int:
        return (self.num_tokens - 1) // self.context_length

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """Windows for many indices at once as an int64 array (len(indices), context_length + 1).

        One fancy-indexing gather from the memmap: no Python loop over samples.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)}) for {self.path}")
        starts = indices * self.context_length
        return self.tokens[starts[:, None] + self._offsets].astype(np.int64)

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of window i as int64 arrays of length context_length."""
        w = self.windows(np.array([i]))[0]
        return w[:-1], w[1:]

    def __repr__(self) -> str:
        return (f"MemmapTokens({str(self.data_dir)!r}, split={self.split!r}, "
                f"context_length={self.context_length}, num_tokens={self.num_tokens}, windows={len(self)})")
