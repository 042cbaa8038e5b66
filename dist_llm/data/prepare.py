"""Tokenize corpora into flat token files that any number of ranks can memory-map.

    python -m dist_llm.data.prepare --input PATH [PATH ...] --tokenizer DIR --out DIR [--workers N]
    python -m dist_llm.data.prepare ... --part I/N; python -m dist_llm.data.prepare merge DIR...  (parts.py)

Output in DIR: each split's token stream as `train.bin` and `val.bin` (raw little-endian uint16 when
the vocabulary has at most 65536 tokens, uint32 otherwise), continued in `train.00001.bin`, ... past
--shard-size tokens (shards.py), and `meta.json` listing the files (meta.py). Layout of the stream:
each document's tokens followed by the separator id: `doc0 <sep> doc1 <sep> ...`, so a model learns
to end a document and every split ends with a separator. A document goes to `val` when a hash of
its file name and its index in that file falls below `val_fraction`: whole documents, the same choice
on every run and every machine, and independent of the number of workers or the chunk size. When that
leaves a split empty (a corpus of one document, or very few), `val` is instead the last `val_fraction`
of the tokens, as nanoGPT splits its single-file datasets (see _cut_validation_tail).

How it stays fast and bounded: the main process cuts the inputs into chunks of about `chunk_size`
bytes on document boundaries (sources.py), hands each chunk to a pool worker that tokenizes it, and
appends the results in input order to `*.tmp` files. At most `2 * workers` chunks are in flight,
so memory is O(workers * chunk_size) whatever the corpus size. (Pool.imap would read its whole input
iterator eagerly, queueing the entire corpus in memory, so the window of in-flight tasks is explicit.)

Crash safety: an existing `meta.json` is removed first, the token files are written under temporary
names, fsynced and renamed, and `meta.json` is written last. A directory without `meta.json` is never
taken for prepared data. Cache: `meta.json` records the inputs (path, size, mtime, sha256), the
tokenizer fingerprint, the options and the format version; a rerun that matches all of them does nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dist_llm.data import DOCUMENT_SEPARATOR
from dist_llm.data.cache import SPLITS, cached_meta, describe_inputs
from dist_llm.data.formats import check_reader
from dist_llm.data.meta import FORMAT_VERSION, META_NAME, PART_META_NAME, token_dtype, write_meta
from dist_llm.data.parts import inputs_digest, merge_main, parse_part, part_files
from dist_llm.data.shards import ShardWriter, default_shard_size
from dist_llm.data.sources import DEFAULT_TEXT_FIELD, DataError, iter_chunks, resolve_inputs, split_chunk
from dist_llm.tokenizer.progress import progress_bar

DEFAULT_CHUNK_SIZE = 1 << 18  # small enough to balance 2+ workers on a few-MB corpus


def is_validation_doc(file_name: str, doc_index: int, val_fraction: float) -> bool:
    """Deterministic choice of whole validation documents: hash(file name, index) < val_fraction."""
    if val_fraction <= 0.0:
        return False
    digest = hashlib.sha256(f"{file_name}\0{doc_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") < val_fraction * 2.0**64


@dataclass
class ChunkTokens:
    """What one worker returns for one chunk."""

    train: np.ndarray
    val: np.ndarray
    train_docs: int
    val_docs: int
    num_bytes: int
    bad_records: list[str]  # messages of the records skipped (--skip-bad-records)
    worker: int  # process id of the worker that tokenized the chunk
    cpu_seconds: float  # its CPU time for this chunk: with wall time, shows whether workers got a core


# Per-process state set by _init_worker (the tokenizer is built once per worker, not per chunk).
_worker: dict[str, Any] = {}


def _init_worker(tokenizer: Any, separator: str, val_fraction: float, replace_invalid_utf8: bool,
                 dtype: str, text_field: str, skip_bad_records: bool) -> None:
    # The tokenizer arrives pickled with its lookup tables built: cheaper than constructing it again.
    _worker.update(tokenizer=tokenizer, separator=separator, sep_id=tokenizer.token_id(separator),
                   val_fraction=val_fraction, replace=replace_invalid_utf8, dtype=np.dtype(dtype),
                   text_field=text_field, skip=skip_bad_records)


def _encode_chunk(chunk: Any) -> ChunkTokens:
    cpu_start = time.process_time()
    encode, sep_id = _worker["tokenizer"].encode, _worker["sep_id"]
    name = os.path.basename(chunk.path)
    ids: dict[str, list[int]] = {"train": [], "val": []}
    docs = {"train": 0, "val": 0}
    bad: list[str] | None = [] if _worker["skip"] else None
    num_bytes = len(chunk.data)
    for doc_index, piece, ends in split_chunk(chunk, _worker["separator"], _worker["replace"],
                                              _worker["text_field"], bad):
        split = "val" if is_validation_doc(name, doc_index, _worker["val_fraction"]) else "train"
        ids[split].extend(encode(piece))
        if chunk.records is not None:
            num_bytes += len(piece.encode("utf-8"))
        if ends:
            ids[split].append(sep_id)
            docs[split] += 1
    dtype = _worker["dtype"]
    return ChunkTokens(np.array(ids["train"], dtype=dtype), np.array(ids["val"], dtype=dtype),
                       docs["train"], docs["val"], num_bytes, bad or [], os.getpid(),
                       time.process_time() - cpu_start)


def _start_method() -> str:
    """fork where it is safe, else spawn.

    fork starts a worker in milliseconds, spawn re-imports numpy and the tokenizer (about a second per
    worker on a busy 2-core machine, as long as tokenizing a few MB). fork is only used on Linux and
    while this process has no other Python thread (the pool is created before the progress bar's
    monitor thread); the workers never touch torch or CUDA, only the tokenizer and numpy.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


@contextlib.contextmanager
def _worker_pool(workers: int, init_args: tuple, start_method: str) -> Iterator[Any]:
    """A started Pool of tokenizer workers, or None for workers == 1 (then this process tokenizes)."""
    if workers <= 1:
        _init_worker(*init_args)
        try:
            yield None
        finally:
            _worker.clear()
        return
    with multiprocessing.get_context(start_method).Pool(workers, _init_worker, init_args) as pool:
        yield pool


def _ordered_results(pool: Any, chunks: Iterator[Any], max_in_flight: int,
                     stats: dict[str, int]) -> Iterator[ChunkTokens]:
    """Results of _encode_chunk in input order, with at most max_in_flight chunks held at once."""
    def note(chunk: Any, in_flight: int) -> Any:
        stats["chunks"] += 1
        stats["max_chunk_bytes"] = max(stats["max_chunk_bytes"], chunk.size)
        stats["max_in_flight"] = max(stats["max_in_flight"], in_flight)
        return chunk

    if pool is None:
        for chunk in chunks:
            yield _encode_chunk(note(chunk, 1))
        return
    pending: collections.deque = collections.deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_chunk, (note(chunk, len(pending) + 1),)))
        if len(pending) >= max_in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def prepare_corpus(
    inputs: list[str | Path],
    tokenizer: Any,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    val_fraction: float = 0.01,
    separator: str = DOCUMENT_SEPARATOR,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    replace_invalid_utf8: bool = False,
    text_field: str = DEFAULT_TEXT_FIELD,
    skip_bad_records: bool = False,
    shard_size: int | None = None,
    part: tuple[int, int] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize `inputs` into out_dir's token files + meta.json and return the meta (see module doc).

    shard_size: tokens per file at most (default: 1 GiB files). part=(I, N): prepare only the I-th of N
    parts of the inputs, into out_dir with a part.json, for `merge` (see parts.py).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if separator not in tokenizer.special_tokens:
        raise DataError(f"the tokenizer has no special token {separator!r} (it has "
                        f"{tokenizer.special_tokens}); train it with that special token or pass the "
                        "separator it uses")
    workers = max(1, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    if not text_field:
        raise DataError("text_field must name a JSONL field / Parquet column, got an empty string")
    out_dir = Path(out_dir)
    files = resolve_inputs(inputs)
    part_info, meta_name = None, META_NAME
    if part is not None:
        index, count = part
        part_info = {"index": index, "count": count, "inputs_digest": inputs_digest(files)}
        files, meta_name = part_files(files, index, count), PART_META_NAME
    for path in files:
        check_reader(path)  # a missing optional package fails now, not after hours of work
    dtype = token_dtype(tokenizer.vocab_size)
    shard_size = default_shard_size(dtype) if shard_size is None else shard_size
    if shard_size < 1:
        raise DataError(f"shard_size must be at least 1 token, got {shard_size}")
    options = {"separator": separator, "val_fraction": val_fraction,
               "replace_invalid_utf8": replace_invalid_utf8, "dtype": dtype.name}
    # Recorded only when not the default, so that data (and content fingerprints) prepared before these
    # options existed still match. shard_size is not an option: it cuts the same stream differently.
    if text_field != DEFAULT_TEXT_FIELD:
        options["text_field"] = text_field
    if skip_bad_records:
        options["skip_bad_records"] = True
    if not force:
        cached = cached_meta(out_dir, files, tokenizer.fingerprint, options, meta_name, part_info)
        if cached is not None:
            print(f"{out_dir} is up to date (inputs, tokenizer and options match {meta_name}); nothing to do")
            return cached

    described = describe_inputs(files)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (META_NAME, PART_META_NAME):  # from here on the directory does not look prepared
        (out_dir / name).unlink(missing_ok=True)
    init_args = (tokenizer, separator, val_fraction, replace_invalid_utf8, dtype.name, text_field,
                 skip_bad_records)
    # in meta's build stats: "spawn" where "fork" was expected means a thread was running (see _start_method)
    start_method = _start_method() if workers > 1 else "none"
    stats = {"chunks": 0, "max_chunk_bytes": 0, "max_in_flight": 0, "start_method": start_method}
    worker_cpu: dict[int, float] = collections.defaultdict(float)
    cpu_started = time.process_time()
    totals = {"train_tokens": 0, "val_tokens": 0, "train_docs": 0, "val_docs": 0, "bytes": 0}
    bad_records: list[str] = []
    num_bad = 0
    started = time.perf_counter()
    writers = {s: ShardWriter(out_dir, s, shard_size, dtype) for s in SPLITS}
    try:
        chunks = (c for path in files for c in iter_chunks(path, chunk_size, separator, text_field))
        with _worker_pool(workers, init_args, start_method) as pool, \
                _progress_bar(sum(d["size"] for d in described), files, progress) as bar:
            for result in _ordered_results(pool, chunks, 2 * workers, stats):
                writers["train"].write(result.train)
                writers["val"].write(result.val)
                totals["train_tokens"] += result.train.size
                totals["val_tokens"] += result.val.size
                totals["train_docs"] += result.train_docs
                totals["val_docs"] += result.val_docs
                totals["bytes"] += result.num_bytes
                num_bad += len(result.bad_records)
                bad_records.extend(result.bad_records[:max(0, 5 - len(bad_records))])
                worker_cpu[result.worker] += result.cpu_seconds
                _on_chunk_written(totals)
                bar.update(result.num_bytes)
        if totals["train_docs"] + totals["val_docs"] == 0 and part is None:
            raise DataError(f"empty corpus: no documents in {', '.join(str(f) for f in files)}")
        val_split = "documents"
        # A part cannot know whether the whole corpus leaves a split empty: merge checks (parts.py).
        if val_fraction > 0 and (totals["train_docs"] == 0 or totals["val_docs"] == 0) and part is None:
            _cut_validation_tail(writers, totals, val_fraction, tokenizer.token_id(separator))
            val_split = "last tokens"
        split_files = {s: writers[s].commit() for s in SPLITS}
    finally:
        for writer in writers.values():
            writer.discard()
    seconds = time.perf_counter() - started
    # Tokenizing CPU time per worker, and the main process's own CPU time besides tokenizing (chunking,
    # hashing, writing, the pool's transfers): a wall time well above max(worker) + main means the
    # workers were short of cores (other load on the machine), not short of speed.
    timing = {"seconds": round(seconds, 3),
              "worker_cpu_seconds": sorted(round(c, 3) for c in worker_cpu.values()),
              "main_cpu_seconds": round(time.process_time() - cpu_started
                                        - (worker_cpu.get(os.getpid(), 0.0)), 3)}

    num_tokens = totals["train_tokens"] + totals["val_tokens"]
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "byte_order": "little",
        "layout": "each document's tokens followed by the separator id",
        "separator": separator,
        "separator_id": tokenizer.token_id(separator),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "splits": {s: {"files": split_files[s], "num_tokens": totals[f"{s}_tokens"],
                       "num_documents": totals[f"{s}_docs"]} for s in SPLITS},
        "val_split": val_split,
        "num_input_bytes": totals["bytes"],
        "bytes_per_token": totals["bytes"] / max(num_tokens, 1),
        "options": options,
        "inputs": described,
        "bad_records": num_bad,
        "build": {**stats, "chunk_size": chunk_size, "shard_size": shard_size, "workers": workers, **timing},
    }
    if part_info is not None:
        meta["part"] = part_info
    write_meta(out_dir, meta, meta_name)
    _print_summary(meta, out_dir, seconds)
    if num_bad:
        print(f"skipped {num_bad:,} bad records (--skip-bad-records); the first: {'; '.join(bad_records)}",
              file=sys.stderr)
    return meta


def _cut_validation_tail(writers: dict[str, ShardWriter], totals: dict[str, int], val_fraction: float,
                         sep_id: int) -> None:
    """Whole documents left one split empty: make `val` the last val_fraction of all the tokens instead
    (at least one token), cut from the end of the token stream in input order. A document counts in the
    split that holds its separator, so the one cut in two counts in `val`."""
    if totals["train_docs"] == 0:  # everything went to val: it is the whole stream, in input order
        writers["train"].take_over(writers["val"])
    num_tokens = totals["train_tokens"] + totals["val_tokens"]
    num_docs = totals["train_docs"] + totals["val_docs"]
    cut = num_tokens - max(1, math.ceil(num_tokens * val_fraction))
    val_docs = 0
    for block in writers["train"].read_tail(num_tokens - cut):  # bounded memory
        writers["val"].write(block)
        val_docs += int(np.count_nonzero(block == sep_id))
    writers["train"].truncate(cut)
    totals.update(train_tokens=cut, val_tokens=num_tokens - cut, train_docs=num_docs - val_docs,
                  val_docs=val_docs)


def _on_chunk_written(totals: dict[str, int]) -> None:
    """Hook after each chunk is appended (tests make it raise to simulate a crash mid-run)."""


def _progress_bar(total_bytes: int, files: list[Path], enabled: bool) -> Any:
    # Sizes of compressed inputs are not text sizes, while progress counts text bytes: no total then.
    total = None if any(f.name.lower().endswith((".gz", ".zst", ".parquet")) for f in files) else total_bytes
    return progress_bar(enabled, total=total, unit="B", unit_scale=True, unit_divisor=1000,
                        desc="tokenizing", file=sys.stderr)


def _print_summary(meta: dict, out_dir: Path, seconds: float) -> None:
    s = meta["splits"]
    mb = meta["num_input_bytes"] / 1e6
    num_docs = s["train"]["num_documents"] + s["val"]["num_documents"]
    if meta["val_split"] == "last tokens":  # per-split document counts would mislead ("0 train + 1 val")
        docs = f"{num_docs:,} document{'s' if num_docs != 1 else ''}, split by tokens"
    else:
        docs = f"{s['train']['num_documents']:,} train + {s['val']['num_documents']:,} val documents"
    print(f"prepared {out_dir}: {docs}, "
          f"{s['train']['num_tokens']:,} train + {s['val']['num_tokens']:,} val tokens ({meta['dtype']}), "
          f"{meta['bytes_per_token']:.2f} bytes/token, {mb:.1f} MB in {seconds:.1f} s "
          f"({mb / max(seconds, 1e-9):.2f} MB/s)")
    if meta["val_split"] == "last tokens":
        print(f"note: whole documents left a split empty ({num_docs} in all), so val is the last "
              f"{meta['options']['val_fraction']:g} of the tokens instead; separate documents with "
              f"{meta['separator']!r} to hold out whole ones", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m dist_llm.data.prepare",
                                     description=__doc__.split("\n")[0],
                                     epilog="python -m dist_llm.data.prepare merge DIR... joins --part runs")
    parser.add_argument("--input", nargs="+", required=True,
                        help=".txt, .jsonl, .json.gz, .parquet files (text/JSONL also .gz or .zst), "
                             "directories or globs")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (or its json file)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--separator", default=DOCUMENT_SEPARATOR)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per work unit")
    parser.add_argument("--replace-invalid-utf8", action="store_true", help="substitute U+FFFD for bad bytes")
    parser.add_argument("--text-field", default=DEFAULT_TEXT_FIELD,
                        help="the JSONL field / Parquet column holding the text (default: text)")
    parser.add_argument("--skip-bad-records", action="store_true",
                        help="skip and count bad JSONL lines / Parquet rows instead of stopping")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="tokens per token file at most (default: 1 GiB files)")
    parser.add_argument("--part", default=None, metavar="I/N",
                        help="prepare only part I (from 0) of N of the inputs, for merge")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from dist_llm.tokenizer import Tokenizer

    try:
        part = parse_part(args.part) if args.part else None
        tokenizer = Tokenizer.load(args.tokenizer)
        prepare_corpus(args.input, tokenizer, args.out, workers=args.workers, val_fraction=args.val_fraction,
                       separator=args.separator, chunk_size=args.chunk_size,
                       replace_invalid_utf8=args.replace_invalid_utf8, text_field=args.text_field,
                       skip_bad_records=args.skip_bad_records, shard_size=args.shard_size, part=part,
                       force=args.force, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
