"""Reading the compressed and columnar corpus formats: gzip, zstd and Parquet.

zstd and Parquet come through optional packages (`pip install 'dist_llm[zstd]'`, `'dist_llm[parquet]'`):
a missing one is a DataError naming the file, the format and the pip command, raised before any work.

zstd is read with zstandard's streaming decompression object rather than its stream_reader, because
stream_reader ends a truncated file silently (it returns what it decoded and then b""), which would
prepare half a file without a word. Here the end of the input must also be the end of a zstd frame,
or the file is reported as truncated. Several concatenated frames (as `zstd -c a b` writes) are read
one after the other.

Parquet is read one row group at a time (pyarrow's iter_batches), and only the text column, so memory
holds at most one row group's text whatever the file size.
"""

from __future__ import annotations

import gzip
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from dist_llm.data.errors import DataError

# suffix: (module to import, its package, the dist_llm extra that installs it, the format's name)
_EXTRAS = {".zst": ("zstandard", "zstandard", "zstd", "zstd-compressed"),
           ".parquet": ("pyarrow.parquet", "pyarrow", "parquet", "Parquet")}
_ZSTD_READ = 1 << 16  # compressed bytes fed to the decompressor at a time


def _extra(path: Path, suffix: str) -> Any:
    """The optional module that reads `suffix` files, or a DataError saying how to install it."""
    module, package, extra, what = _EXTRAS[suffix]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{path}: reading {what} input needs the {package} package, which is not installed: "
                        f"pip install 'dist_llm[{extra}]' (or pip install {package})") from None


def check_reader(path: Path) -> None:
    """Fail now, not after hours of preparation, when `path` needs an optional package that is missing."""
    for suffix in _EXTRAS:
        if path.name.lower().endswith(suffix):
            _extra(path, suffix)


class ZstdReader:
    """A read(n) stream of a zstd file's decompressed bytes that raises DataError on a truncated file."""

    def __init__(self, path: Path) -> None:
        self._zstd = _extra(path, ".zst")
        self.path = path
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close() / the with block
        self._obj = self._zstd.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._in_frame = False  # bytes of a frame fed, its end not yet seen
        self._eof = False

    def _fill(self) -> None:
        data = self._raw.read(_ZSTD_READ)
        if not data:
            self._eof = True
            if self._in_frame:
                raise DataError(f"{self.path}: truncated zstd file: the input ends inside a compressed frame "
                                "(an interrupted download or copy?); fetch the file again")
            return
        try:
            while data:
                self._in_frame = True
                self._pending += self._obj.decompress(data)
                if not self._obj.eof:
                    break
                data = self._obj.unused_data  # the next frame starts here
                self._obj = self._zstd.ZstdDecompressor().decompressobj()
                self._in_frame = False
        except self._zstd.ZstdError as e:
            raise DataError(f"{self.path}: not a valid zstd file ({e})") from None

    def read(self, n: int) -> bytes:
        while len(self._pending) < n and not self._eof:
            self._fill()
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> ZstdReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_binary(path: Path) -> BinaryIO:
    """The file's (decompressed) bytes as a stream."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        if name.endswith(".zst"):
            return ZstdReader(path)  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read input ({e.strerror or e})") from e


def parquet_batches(path: Path, text_field: str, rows_per_batch: int) -> Iterator[list[Any]]:
    """The values of column `text_field`, row group by row group, in lists of at most rows_per_batch."""
    pq = _extra(path, ".parquet")
    import pyarrow as pa

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e}); is it truncated or corrupt?") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); name the "
                        "text column with data.text_field (--text-field)")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {text_field!r} holds {kind}, expected strings; name the text column "
                        "with data.text_field (--text-field)")
    with pf:
        row = 0
        for group in range(pf.num_row_groups):
            try:
                for batch in pf.iter_batches(rows_per_batch, row_groups=[group], columns=[text_field]):
                    values = batch.column(0).to_pylist()
                    row += len(values)
                    yield values
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"{path}: row group {group} (from row {row}, counting from 0) cannot be "
                                f"read ({e}); is the file truncated or corrupt?") from None
