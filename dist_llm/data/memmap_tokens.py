"""Fixed-length training windows over a prepared split's token files, read through numpy.memmap.

A split is one token stream, stored in one or several files (shards, or the parts of a multi-machine
preparation; see meta.py) that are concatenated in the order meta.json lists them. Window i covers
tokens [i*T, i*T + T + 1) of that stream (T = context_length): x = w[:-1], y = w[1:]. Consecutive
windows share one token (the last target of window i is the first input of window i+1), so the inputs
tile the stream without overlap and no token is wasted as an input; len() = (num_tokens - 1) // T.
The tail shorter than a window is not used.

Windows DO cross file boundaries: the files are a storage detail, not a unit of the data. A window
already spans documents (they are packed, separated by the separator token), and a file boundary always
falls between documents or inside one, just like a window boundary. Crossing keeps the windows, their
count and so the sampler's state independent of how the stream was cut into files: one-machine and
multi-machine preparations of the same inputs give the same windows, and a resume does not care
about --shard-size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dist_llm.data.errors import DataError
from dist_llm.data.meta import content_fingerprint, read_meta, split_files


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
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        try:
            files = split_files(self.meta, split)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.data_dir}/meta.json: split {split!r} lists no usable token files "
                            f"({e!r}); {prepare_hint}") from None
        self.paths = [self.data_dir / name for name, _ in files]
        self.path = self.paths[0]
        self.num_tokens = sum(n for _, n in files)
        for path, (_, count) in zip(self.paths, files, strict=True):
            self._check_size(path, count, prepare_hint)
        if self.num_tokens < context_length + 1:
            raise DataError(
                f"split {split!r} of {self.data_dir} has {self.num_tokens} tokens, fewer than one window of "
                f"context_length + 1 = {context_length + 1}; use a shorter context_length, more data, or "
                "(for val) a larger validation fraction (data.val_fraction in the trainer, --val-fraction "
                "for dist_llm.data.prepare)")
        # Empty files (a part with no validation documents, say) hold nothing to map; np.memmap refuses them.
        used = [(p, n) for p, (_, n) in zip(self.paths, files, strict=True) if n > 0]
        self.files = [np.memmap(p, dtype=self.dtype, mode="r", shape=(n,)) for p, n in used]
        # starts[k] = stream position of file k's first token; starts[-1] = num_tokens
        self._starts = np.cumsum([0] + [n for _, n in used], dtype=np.int64)
        self._single = self.files[0] if len(self.files) == 1 else None  # the one-file fast path
        # Offsets of one window relative to its start, reused by every gather.
        self._offsets = np.arange(context_length + 1, dtype=np.int64)

    def _check_size(self, path: Path, num_tokens: int, prepare_hint: str) -> None:
        expected_size = num_tokens * self.dtype.itemsize
        actual_size = path.stat().st_size if path.exists() else None
        if actual_size != expected_size:
            found = "is missing" if actual_size is None else f"has {actual_size} bytes"
            raise DataError(f"{path} {found}, but meta.json says {num_tokens} {self.dtype.name} "
                            f"tokens = {expected_size} bytes; the file is truncated or from another run: "
                            f"{prepare_hint}")

    @property
    def tokens(self) -> np.memmap:
        """The split's tokens as one array: only for a split stored in one file (use windows() otherwise)."""
        if self._single is None:
            raise DataError(f"split {self.split!r} of {self.data_dir} is stored in {len(self.files)} token "
                            "files, not one array; read it with windows(indices) / window(i)")
        return self._single

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
        positions = (indices * self.context_length)[:, None] + self._offsets
        if self._single is not None:
            return self._single[positions].astype(np.int64)
        # Several files: find each position's file, then one gather per file the batch touches.
        which = np.searchsorted(self._starts, positions, side="right") - 1
        out = np.empty(positions.shape, dtype=np.int64)
        for k in np.unique(which):
            mask = which == k
            out[mask] = self.files[k][positions[mask] - self._starts[k]]
        return out

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of window i as int64 arrays of length context_length."""
        w = self.windows(np.array([i]))[0]
        return w[:-1], w[1:]

    def __repr__(self) -> str:
        return (f"MemmapTokens({str(self.data_dir)!r}, split={self.split!r}, "
                f"context_length={self.context_length}, num_tokens={self.num_tokens}, windows={len(self)})")
