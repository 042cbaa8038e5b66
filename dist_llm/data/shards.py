"""Writing one split's token stream as shard files of at most `shard_size` tokens each.

Names: the first shard keeps the single-file name `train.bin` (so a small corpus looks as it always
did), later ones are `train.00001.bin`, `train.00002.bin`, ... A shard is cut at exactly shard_size
tokens, wherever that falls: the loader reads the files as one stream (memmap_tokens.py), so the cut
points carry no meaning. Until commit(), every file has a temporary name (`.train.bin.tmp`, ...), so
a crash never leaves a file that looks finished.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dist_llm.utils.atomic_io import fsync_path

DEFAULT_SHARD_BYTES = 1 << 30  # about 1 GB per file: easy to copy, list and memory-map


def default_shard_size(dtype: np.dtype) -> int:
    """Tokens per shard when --shard-size is not given: 1 GiB files whatever the token width."""
    return DEFAULT_SHARD_BYTES // np.dtype(dtype).itemsize


def shard_name(split: str, index: int) -> str:
    return f"{split}.bin" if index == 0 else f"{split}.{index:05d}.bin"


class ShardWriter:
    """Appends tokens to out_dir/<split> shards; commit() fsyncs and renames them to their final names."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, dtype: np.dtype) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1 token, got {shard_size}")
        self.out_dir, self.split, self.shard_size, self.dtype = Path(out_dir), split, shard_size, dtype
        self.counts: list[int] = []  # tokens in each shard written so far
        self._file: BinaryIO | None = None
        self._open_next()

    def _tmp(self, index: int) -> Path:
        return self.out_dir / f".{shard_name(self.split, index)}.tmp"

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self._tmp(len(self.counts)), "wb")  # noqa: SIM115 - closed by the writer
        self.counts.append(0)

    @property
    def num_tokens(self) -> int:
        return sum(self.counts)

    def write(self, tokens: np.ndarray) -> None:
        assert self._file is not None
        while tokens.size:
            if self.counts[-1] == self.shard_size:
                self._open_next()
            take = min(tokens.size, self.shard_size - self.counts[-1])
            tokens[:take].tofile(self._file)
            self.counts[-1] += take
            tokens = tokens[take:]

    def read_tail(self, count: int, block: int = 1 << 20) -> Iterator[np.ndarray]:
        """The last `count` tokens, in blocks of at most `block` tokens, in order (bounded memory)."""
        self.flush()
        position = self.num_tokens - count
        for index, n in enumerate(self.counts):
            if position >= n:
                position -= n
                continue
            with open(self._tmp(index), "rb") as f:
                f.seek(position * self.dtype.itemsize)
                while (piece := np.fromfile(f, dtype=self.dtype, count=block)).size:
                    yield piece
            position = 0

    def truncate(self, num_tokens: int) -> None:
        """Keep only the first num_tokens tokens (dropping whole shards past them)."""
        self.close()
        while len(self.counts) > 1 and sum(self.counts[:-1]) >= num_tokens:
            self._tmp(len(self.counts) - 1).unlink()
            self.counts.pop()
        keep = num_tokens - sum(self.counts[:-1])
        os.truncate(self._tmp(len(self.counts) - 1), keep * self.dtype.itemsize)
        self.counts[-1] = keep
        self._file = open(self._tmp(len(self.counts) - 1), "ab")  # noqa: SIM115

    def take_over(self, other: ShardWriter) -> None:
        """Become `other`'s files (renamed to this split's names); `other` is left with one empty shard."""
        self.close()
        other.close()
        self.discard()
        for index in range(len(other.counts)):
            os.replace(other._tmp(index), self._tmp(index))
        self.counts, other.counts = other.counts, []
        self._file = open(self._tmp(len(self.counts) - 1), "ab")  # noqa: SIM115
        other._open_next()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def commit(self) -> list[dict]:
        """Give the shards their final names; [{"file", "num_tokens"}] for meta.json."""
        self.close()
        for stale in self.out_dir.glob(f"{self.split}.*.bin"):  # later shards of an earlier, longer run
            stale.unlink()
        files = []
        for index, n in enumerate(self.counts):
            final = self.out_dir / shard_name(self.split, index)
            fsync_path(self._tmp(index))
            os.replace(self._tmp(index), final)
            files.append({"file": final.name, "num_tokens": n})
        return files

    def discard(self) -> None:
        """Remove the temporary files (after a failure, or before take_over)."""
        self.close()
        for index in range(len(self.counts)):
            self._tmp(index).unlink(missing_ok=True)
