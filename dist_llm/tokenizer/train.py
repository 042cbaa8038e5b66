"""train_bpe: byte-level BPE training on corpus files (streaming, parallel counting, fast merges)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

from .bpe_merge import learn_merges
from .corpus import check_input_files, count_corpus
from .errors import TokenizerError
from .pretokenize import validate_special_tokens

# Below this much input, starting worker processes costs more than it saves.
_PARALLEL_MIN_BYTES = 2 << 20
_PROGRESS_MIN_BYTES = 16 << 20


def build_vocab(special_tokens: Sequence[str], merges: Sequence[tuple[bytes, bytes]]) -> dict[int, bytes]:
    """The vocabulary layout: ids 0..255 the single bytes, then the special tokens, then one per merge."""
    vocab = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    for left, right in merges:
        vocab[len(vocab)] = left + right
    return vocab


def _resolve_workers(num_workers: int | None, total_bytes: int) -> int:
    if num_workers is None:
        return 1 if total_bytes < _PARALLEL_MIN_BYTES else min(os.cpu_count() or 1, 8)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise TokenizerError(f"num_workers must be a positive integer or None, got {num_workers!r}")
    return num_workers


def train_bpe(
    input_path: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str] | None = None,
    *,
    num_workers: int | None = None,
    chunk_bytes: int | None = None,
    start_method: str | None = None,
    progress: bool | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Trains a byte-level BPE tokenizer on one or more UTF-8 text files.

    Args:
        input_path: a file, or several files (each file ends a document).
        vocab_size: the size of the final vocabulary: 256 bytes + special tokens + merges. Training
            stops early if the corpus runs out of pairs to merge.
        special_tokens: strings split out before pre-tokenization; they mark document boundaries,
            are never merged, and get ids 256, 257, ...
        num_workers: processes that count pre-tokens, this one included (never more than one per
            MB of input); None picks 1 below 2 MB, else the CPU count (at most 8). The result is
            identical for any value.
        chunk_bytes: target size of the file chunks handed to workers (None: automatic).
        start_method: multiprocessing start method ("fork", "spawn", ...; None: the platform default).
        progress: show tqdm progress bars; None shows them for large inputs on a terminal.

    Returns:
        (vocab, merges): vocab maps id -> token bytes; merges are the (left, right) pairs in order.
    """
    specials = validate_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab_size must be an integer, got {vocab_size!r}")
    if vocab_size < 256 + len(specials):
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small: it must be at least 256 (the single bytes) + "
            f"{len(specials)} special token(s) = {256 + len(specials)}"
        )
    paths = [input_path] if isinstance(input_path, (str, os.PathLike)) else list(input_path)
    files = check_input_files(paths)
    total = sum(p.stat().st_size for p in files)
    workers = _resolve_workers(num_workers, total)
    if progress is None:
        progress = sys.stderr.isatty() and total >= _PROGRESS_MIN_BYTES
    counts = count_corpus(
        files,
        specials,
        num_workers=workers,
        chunk_bytes=chunk_bytes,
        start_method=start_method,
        progress=progress,
    )
    word_counts = {piece.encode("utf-8"): c for piece, c in counts.items()}
    del counts
    merges = learn_merges(word_counts, vocab_size - 256 - len(specials), progress=progress)
    return build_vocab(specials, merges), merges
