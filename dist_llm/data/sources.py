"""Finding corpus files, cutting them into chunks, and splitting chunks into documents.

Inputs, given as files, directories (searched recursively) or glob patterns:
- `.txt`: documents separated by a separator such as `<|endoftext|>`;
- `.jsonl`: one JSON object per line whose string field `text` (or the field `text_field` names) is the
  document; `.json.gz` / `.json.zst` are JSONL too (Dolma names its files so);
- `.parquet`: one document per row, from the string column `text` (or `text_field`);
- each text/JSONL format also gzip- or zstd-compressed (`.txt.gz`, `.jsonl.zst`, ...): see formats.py.

Bad records (a JSONL line that is not JSON, lacks the field or holds a non-string; a Parquet null) stop
the preparation with an error naming the file and line / row, unless the caller collects them instead
(split_chunk's `bad` list, --skip-bad-records); then they are skipped and counted.

What a document is in a `.txt` file: the text between two separators (or the start/end of the file),
without one line break ("\\n" or "\\r\\n") directly after the preceding separator and one directly before
the following separator or the end of the file. So both `a<|endoftext|>b` and
`a\\n<|endoftext|>\\nb\\n` hold the documents "a" and "b". Documents that are empty or whitespace only
are skipped.

Chunks: the reader cuts each file's (decompressed) byte stream into chunks of about `chunk_size`
bytes, each ending either right after a separator or at a "safe" line break inside a long document.
A line break is safe when it sits between two printable ASCII characters (`x\\ny`), or is the first of
two (`x\\n\\ny`): with the GPT-2 pre-tokenization regex such a position is always a pre-token boundary,
so encoding the two pieces separately gives exactly the tokens of encoding the whole document. This is
what lets a single huge document be tokenized in bounded memory and in parallel. A chunk is larger than
`chunk_size` only when a document has no separator or safe line break for that long (then the search
window doubles until one is found).
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_llm.data.errors import DataError
from dist_llm.data.formats import open_binary, parquet_batches

__all__ = ["DataError", "Chunk", "input_kind", "resolve_inputs", "iter_chunks", "split_chunk", "open_binary"]

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
DEFAULT_TEXT_FIELD = "text"

# Printable ASCII without space: characters that can never be part of a whitespace pre-token.
_SAFE_BYTES = frozenset(range(0x21, 0x7F))
_NEWLINE = 0x0A


def input_kind(path: Path) -> str:
    """'txt', 'jsonl' or 'parquet' from the file name; DataError for anything else."""
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "txt"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise DataError(f"{path}: unsupported input type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def resolve_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files, directories and globs into a sorted-per-argument, de-duplicated list of files.

    Order follows the arguments; within a directory or glob the files are sorted by path, so the
    output token order never depends on the file system's listing order.
    """
    files: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            files.append(path)

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(f"{path}: directory holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
            for p in found:
                add(p)
        elif path.is_file():
            input_kind(path)
            add(path)
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            matches = [p for p in matches if p.name.lower().endswith(SUPPORTED_SUFFIXES)]
            if not matches:
                raise DataError(f"{text}: glob matches no {'/'.join(SUPPORTED_SUFFIXES)} files")
            for p in matches:
                add(p)
        else:
            raise DataError(f"{text}: no such file, directory or glob match")
    if not files:
        raise DataError("no input files given")
    return files


@dataclass(frozen=True)
class Chunk:
    """A byte range of one input file, cut on a document (or safe line) boundary, with its bytes.

    start_kind / end_kind say what lies at each end: "file" (start/end of the file), "sep" (right after
    a separator) or "mid" (a safe line break inside a document). first_doc is the index, within the
    file, of the document (txt: the separator-delimited segment; jsonl: the line; parquet: the row) the
    chunk starts in. A Parquet chunk holds the column's values in `records` (data is empty, start is its
    first row); each value is one document.
    """

    path: str
    kind: str
    start: int
    data: bytes
    first_doc: int
    start_kind: str
    end_kind: str
    records: tuple[Any, ...] | None = None

    @property
    def size(self) -> int:
        """About how many bytes of text the chunk holds (characters for Parquet: no encoding needed)."""
        if self.records is None:
            return len(self.data)
        return sum(len(r) for r in self.records if isinstance(r, str))


def _is_safe_line_cut(buf: bytes, p: int, sep: bytes) -> bool:
    """Whether a chunk may end at p (just after buf[p-1] == '\\n') inside a document."""
    if p < 2 or p + 1 >= len(buf) or buf[p - 2] not in _SAFE_BYTES or buf.endswith(sep, 0, p - 1):
        return False
    nxt = p + 1 if buf[p] == _NEWLINE else p  # 'x\n\ny' is cut after its first newline
    return buf[nxt] in _SAFE_BYTES and not buf.startswith(sep, nxt)


def _last_txt_cut(buf: bytes, limit: int, sep: bytes) -> tuple[int, str] | None:
    """The last cut position <= limit and what it is ('sep' or 'mid'), or None."""
    s = buf.rfind(sep, 0, limit)
    sep_cut = s + len(sep) if s >= 0 else -1
    p = limit
    while True:
        nl = buf.rfind(b"\n", max(sep_cut, 0), p)
        if nl < 0 or nl + 1 <= sep_cut:
            break
        if _is_safe_line_cut(buf, nl + 1, sep):
            return nl + 1, "mid"
        p = nl
    return (sep_cut, "sep") if sep_cut > 0 else None


def _last_jsonl_cut(buf: bytes, limit: int) -> tuple[int, str] | None:
    nl = buf.rfind(b"\n", 0, limit)
    return (nl + 1, "sep") if nl >= 0 else None


def _parquet_chunks(path: Path, chunk_size: int, text_field: str) -> Iterator[Chunk]:
    """Runs of consecutive rows holding about chunk_size characters of text."""
    rows: list[Any] = []
    size = row = 0
    for values in parquet_batches(path, text_field, rows_per_batch=1024):
        for value in values:
            rows.append(value)
            size += len(value) if isinstance(value, str) else 0
            if size >= chunk_size:
                yield Chunk(str(path), "parquet", row, b"", row, "sep", "sep", tuple(rows))
                row += len(rows)
                rows, size = [], 0
    if rows:
        yield Chunk(str(path), "parquet", row, b"", row, "sep", "file", tuple(rows))


def iter_chunks(path: Path, chunk_size: int, separator: str,
                text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[Chunk]:
    """Cut one file into chunks of about chunk_size bytes; memory stays O(chunk_size)."""
    if chunk_size < 64:
        raise DataError(f"chunk_size must be at least 64 bytes, got {chunk_size}")
    kind = input_kind(path)
    if kind == "parquet":
        yield from _parquet_chunks(path, chunk_size, text_field)
        return
    sep = separator.encode("utf-8")
    block = max(chunk_size, 1 << 16)
    with open_binary(path) as f:
        buf = b""
        eof = False
        offset = 0  # file offset of buf[0]
        doc = 0
        start_kind = "file"
        while True:
            limit = chunk_size
            cut = None
            while cut is None:
                # +2 bytes of lookahead so a safe-line-cut check at the limit can see what follows.
                while not eof and len(buf) < limit + 2:
                    try:
                        more = f.read(block)
                    except (OSError, EOFError, gzip.BadGzipFile) as e:
                        raise DataError(f"{path}: cannot read input ({e})") from e
                    eof = not more
                    buf += more
                if eof and len(buf) <= limit:
                    cut = (len(buf), "file")
                else:
                    cut = _last_txt_cut(buf, limit, sep) if kind == "txt" else _last_jsonl_cut(buf, limit)
                    limit *= 2  # no boundary within limit: this document is long, look further
            end, end_kind = cut
            if end == 0:
                return
            data = buf[:end]
            yield Chunk(str(path), kind, offset, data, doc, start_kind, end_kind)
            doc += data.count(sep) if kind == "txt" else data.count(b"\n")
            buf = buf[end:]
            offset += end
            start_kind = end_kind
            if end_kind == "file":
                return


def decode_chunk(chunk: Chunk, replace_invalid_utf8: bool) -> str:
    """UTF-8 text of a chunk; the error names the file and the byte offset of the bad byte."""
    try:
        return chunk.data.decode("utf-8", errors="replace" if replace_invalid_utf8 else "strict")
    except UnicodeDecodeError as e:
        compressed = chunk.path.lower().endswith((".gz", ".zst"))
        where = "in the decompressed stream" if compressed else "in the file"
        line = ""
        if chunk.kind == "jsonl":  # a .jsonl chunk starts at a line: its JSON errors give file:line too
            newlines = chunk.data.count(b"\n", 0, e.start)
            line = f":{chunk.first_doc + newlines + 1}"
        raise DataError(
            f"{chunk.path}{line}: invalid UTF-8 at byte offset {chunk.start + e.start} {where} ({e.reason}); "
            "the input must be UTF-8: convert it (Latin-1 text: iconv -f LATIN1 -t UTF-8), or substitute "
            "U+FFFD for bad bytes with python -m dist_llm.data.prepare --replace-invalid-utf8 "
            "(replace_invalid_utf8=True)"
        ) from None


def _strip_one_newline_start(s: str) -> str:
    return s[2:] if s.startswith("\r\n") else s[1:] if s.startswith("\n") else s


def _strip_one_newline_end(s: str) -> str:
    return s[:-2] if s.endswith("\r\n") else s[:-1] if s.endswith("\n") else s


def split_chunk(chunk: Chunk, separator: str, replace_invalid_utf8: bool = False,
                text_field: str = DEFAULT_TEXT_FIELD,
                bad: list[str] | None = None) -> Iterator[tuple[int, str, bool]]:
    """(document index, text piece, whether the document ends with this piece) for each piece.

    A bad record raises DataError, or, when a `bad` list is given, is skipped with its message appended.
    """
    if chunk.records is not None:
        yield from _split_records(chunk, text_field, bad)
        return
    text = decode_chunk(chunk, replace_invalid_utf8)
    if chunk.start == 0:
        # A byte-order mark (Windows editors write one) marks the encoding; it is not the text's.
        text = text.removeprefix("\ufeff")
    if chunk.kind == "jsonl":
        yield from _split_jsonl(chunk, text, text_field, bad)
        return
    segments = text.split(separator)
    last = len(segments) - 1
    for j, piece in enumerate(segments):
        if j == last and chunk.end_kind == "sep":
            break  # the empty tail after the final separator: the next document starts in the next chunk
        continues = j == 0 and chunk.start_kind == "mid"
        ends = j < last or chunk.end_kind == "file"
        if j > 0 or chunk.start_kind == "sep":
            piece = _strip_one_newline_start(piece)
        if ends:
            piece = _strip_one_newline_end(piece)
        if not continues and ends and not piece.strip():
            continue
        yield chunk.first_doc + j, piece, ends


def _bad_record(message: str, bad: list[str] | None) -> None:
    if bad is None:
        raise DataError(message + "; or skip such records with --skip-bad-records (data.skip_bad_records)")
    bad.append(message)


def _split_records(chunk: Chunk, text_field: str, bad: list[str] | None) -> Iterator[tuple[int, str, bool]]:
    for j, doc in enumerate(chunk.records or ()):
        if not isinstance(doc, str):
            _bad_record(f"{chunk.path}: row {chunk.first_doc + j} (counting from 0): column {text_field!r} "
                        f"is {'null' if doc is None else type(doc).__name__}, expected a string", bad)
        elif doc.strip():
            yield chunk.first_doc + j, doc, True


def _split_jsonl(chunk: Chunk, text: str, text_field: str,
                 bad: list[str] | None) -> Iterator[tuple[int, str, bool]]:
    lines = text.split("\n")
    if chunk.end_kind == "sep" or lines[-1] == "":
        lines.pop()
    for j, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{chunk.path}:{chunk.first_doc + j + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            _bad_record(f"{where}: invalid JSON ({e.msg} at column {e.colno})", bad)
            continue
        if not isinstance(record, dict) or text_field not in record:
            got = line[:80]
            _bad_record(f'{where}: expected a JSON object with a "{text_field}" field, got {got!r}', bad)
            continue
        doc = record[text_field]
        if not isinstance(doc, str):
            _bad_record(f'{where}: "{text_field}" must be a string, got {type(doc).__name__}', bad)
        elif doc.strip():
            yield chunk.first_doc + j, doc, True
