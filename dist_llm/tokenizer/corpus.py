"""Streaming, parallel pre-token counting over corpus files.

A file is cut into chunks of about `chunk_bytes` whose boundaries fall where pre-tokenization is
provably unaffected by the cut: preferably at the start of a special token (a document boundary),
else, in a long stretch without one, between a printable ASCII character and a line break
(see `_newline_cut`). Each process reads and counts its own share of chunks (this process
included), so no text travels between processes and a process holds one chunk's text at a time
plus its counts: peak memory grows with the number of distinct pre-tokens, not with the file
size, and the counts are identical for any number of workers and chunk size.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from .errors import TokenizerError
from .pretokenize import count_pretokens, special_token_regex
from .progress import progress_bar

# Each chunk's text and its list of pre-token strings (~50 bytes each) are alive at once: 1 MB
# chunks keep that to tens of MB per process.
DEFAULT_CHUNK_BYTES = 1 << 20
_SHARE_BYTES = 256 << 20
# Starting a process costs more than counting less than this much text.
MIN_BYTES_PER_PROCESS = 1 << 20
_SEARCH_WINDOW = 1 << 20
# A printable, non-space ASCII character followed by "\n" or "\r": the cut goes between them.
_NEWLINE_CUT = re.compile(rb"[\x21-\x7e](?=[\r\n])")


def check_input_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Resolves the input paths, raising TokenizerError for a missing, non-regular or empty file."""
    if not paths:
        raise TokenizerError("no input files given")
    checked = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise TokenizerError(f"input file {str(path)!r} does not exist")
        if not path.is_file():
            raise TokenizerError(f"input path {str(path)!r} is not a regular file")
        if path.stat().st_size == 0:
            raise TokenizerError(f"input file {str(path)!r} is empty: nothing to train on")
        checked.append(path)
    return checked


def _straddles(window: bytes, p: int, specials: Sequence[bytes]) -> bool:
    """True if some special token occurrence starts before offset p and ends after it."""
    for tok in specials:
        n = len(tok)
        if n > 1:
            i = window.find(tok, max(0, p - n + 1), p + n - 1)
            if i != -1 and i < p:
                return True
    return False


def _special_cut(window: bytes, lo: int, hi: int, specials: Sequence[bytes]) -> int | None:
    """The first start of a special token in window[lo:hi] that no other occurrence straddles."""
    start = lo
    while True:
        hits = [i for i in (window.find(t, start) for t in specials) if i != -1 and i < hi]
        if not hits:
            return None
        p = min(hits)
        if not _straddles(window, p, specials):
            return p
        start = p + 1


def _newline_cut(window: bytes, lo: int, hi: int, specials: Sequence[bytes]) -> int | None:
    """The first cut "X|\\n" (or "X|\\r") in window[lo:hi] that no special token spans.

    Why it is safe: the pre-token holding the non-space character X ends at X whether a line break
    or the end of the text follows (no GPT-2 pre-token runs from a non-space character into
    whitespace), earlier pre-tokens are decided by the text up to X and at most the line break after
    it (a "'" before X = "l" reads one more character to rule out "'ll"; a line break, like the end of
    the text, rules it out), and the pattern has no look-behind, so matching from the line break on
    gives the same pre-tokens as in the whole text. Being ASCII, both bytes are character boundaries,
    and Windows line ends ("\\r\\n") work too.
    """
    for m in _NEWLINE_CUT.finditer(window, max(0, lo - 1), hi):
        p = m.end()
        if p >= lo and not _straddles(window, p, specials):
            return p
    return None


def iter_chunk_bounds(
    path: Path, special_tokens: Sequence[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tuple[int, int]]:
    """Yields (start, end) byte ranges covering the file, cut only at safe boundaries."""
    specials = [t.encode("utf-8") for t in special_tokens]
    max_len = max((len(t) for t in specials), default=1)
    size = path.stat().st_size
    start = 0
    with open(path, "rb") as f:
        while start < size:
            pos = start + chunk_bytes
            end = size
            while pos < size:
                base = max(0, pos - max_len)
                f.seek(base)
                window = f.read(pos - base + _SEARCH_WINDOW + max_len)
                lo, hi = pos - base, min(len(window), pos - base + _SEARCH_WINDOW)
                cut = _special_cut(window, lo, hi, specials) if specials else None
                if cut is None:
                    cut = _newline_cut(window, lo, hi, specials)
                if cut is not None:
                    end = base + cut
                    break
                pos += _SEARCH_WINDOW
            yield start, end
            start = end


@lru_cache(maxsize=8)
def _cached_special_regex(special_tokens: tuple[str, ...]):
    return special_token_regex(special_tokens)


def _read_text(path: str, start: int, end: int) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"input file {path!r} is not valid UTF-8 at byte offset {start + e.start}: {e.reason}"
        ) from None
    # A byte-order mark marks the encoding, it is not text (data preparation drops it the same way).
    return text.removeprefix("\ufeff") if start == 0 else text


def count_chunks(tasks: list[tuple[str, int, int, tuple[str, ...]]], counts: Counter[str] | None = None):
    """Worker: counts the pre-tokens of a list of (path, start, end, special_tokens) byte ranges.

    Top-level, so it works with any start method. Returns (counts, bytes read).
    """
    counts = Counter() if counts is None else counts
    nbytes = 0
    for path, start, end, special_tokens in tasks:
        count_pretokens(_read_text(path, start, end), _cached_special_regex(special_tokens), counts)
        nbytes += end - start
    return counts, nbytes


def _shares(tasks: list, n: int) -> list[list]:
    """Splits the tasks into n runs of consecutive chunks with about equal byte counts."""
    total = sum(end - start for _, start, end, _ in tasks)
    shares: list[list] = [[] for _ in range(n)]
    done = 0
    for task in tasks:
        shares[min(n - 1, done * n // max(1, total))].append(task)
        done += task[2] - task[1]
    return [share for share in shares if share]


def count_corpus(
    paths: Sequence[Path],
    special_tokens: Sequence[str],
    *,
    num_workers: int = 1,
    chunk_bytes: int | None = None,
    start_method: str | None = None,
    progress: bool = False,
) -> Counter[str]:
    """Counts the pre-tokens of all files in up to `num_workers` processes (this one included; one
    per MIN_BYTES_PER_PROCESS of input at most).

    The work is split into equal shares up front: this process counts its own shares while
    `num_workers - 1` pool processes count the others, each into one Counter that comes back once,
    so little is pickled and nothing waits on a dispatcher. Shares are at most `_SHARE_BYTES`, so
    the progress bar moves on big inputs.
    """
    total = sum(p.stat().st_size for p in paths)
    num_workers = max(1, min(num_workers, total // MIN_BYTES_PER_PROCESS))
    # At least ~8 chunks per process, so the shares come out about equal.
    chunk_bytes = chunk_bytes or min(DEFAULT_CHUNK_BYTES, max(1 << 16, total // (8 * num_workers) + 1))
    specials = tuple(special_tokens)
    tasks = [
        (str(p), start, end, specials)
        for p in paths
        for start, end in iter_chunk_bounds(p, specials, chunk_bytes)
    ]
    counts: Counter[str] = Counter()
    with progress_bar(progress, total=total, unit="B", unit_scale=True, desc="pre-tokenize") as bar:
        rounds = -(-total // (num_workers * _SHARE_BYTES))
        shares = _shares(tasks, max(1, num_workers * rounds) if num_workers > 1 else len(tasks))
        if num_workers <= 1 or len(shares) == 1:
            for share in shares:
                bar.update(count_chunks(share, counts)[1])
            return counts
        own, others = shares[::num_workers], [s for i, s in enumerate(shares) if i % num_workers]
        ctx = multiprocessing.get_context(start_method)
        with ctx.Pool(min(num_workers - 1, len(others))) as pool:
            results = pool.imap_unordered(count_chunks, others)
            for share in own:
                bar.update(count_chunks(share, counts)[1])
            for share_counts, nbytes in results:
                counts.update(share_counts)
                bar.update(nbytes)
    return counts
