"""Tokenize corpora into flat token files that any number of ranks can memory-map.

    python -m dist_llm.data.prepare --input PATH [PATH ...] --tokenizer DIR --out DIR [--workers N]

Output in DIR: `train.bin` and `val.bin` (raw little-endian uint16 when the vocabulary has at most
65536 tokens, uint32 otherwise) and `meta.json` (see README, section Data). Layout of a token file:
each document's tokens followed by the separator id: `doc0 <sep> doc1 <sep> ...`, so a model learns
to end a document and every token file ends with a separator. A document goes to `val` when a hash of
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

from dist_llm.atomic_io import fsync_path
from dist_llm.data.meta import FORMAT_VERSION, META_NAME, read_meta, token_dtype, write_meta
from dist_llm.data.sources import DataError, iter_chunks, resolve_inputs, split_chunk
from dist_llm.file_hash import file_sha256
from dist_llm.tokenizer.progress import progress_bar

DEFAULT_CHUNK_SIZE = 1 << 18  # small enough to balance 2+ workers on a few-MB corpus
SPLITS = ("train", "val")


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
    worker: int  # process id of the worker that tokenized the chunk
    cpu_seconds: float  # its CPU time for this chunk: with wall time, shows whether workers got a core


# Per-process state set by _init_worker (the tokenizer is built once per worker, not per chunk).
_worker: dict[str, Any] = {}


def _init_worker(tokenizer: Any, separator: str, val_fraction: float, replace_invalid_utf8: bool,
                 dtype: str) -> None:
    # The tokenizer arrives pickled with its lookup tables built: cheaper than constructing it again.
    _worker.update(tokenizer=tokenizer, separator=separator, sep_id=tokenizer.token_id(separator),
                   val_fraction=val_fraction, replace=replace_invalid_utf8, dtype=np.dtype(dtype))


def _encode_chunk(chunk: Any) -> ChunkTokens:
    cpu_start = time.process_time()
    encode, sep_id = _worker["tokenizer"].encode, _worker["sep_id"]
    name = os.path.basename(chunk.path)
    ids: dict[str, list[int]] = {"train": [], "val": []}
    docs = {"train": 0, "val": 0}
    for doc_index, piece, ends in split_chunk(chunk, _worker["separator"], _worker["replace"]):
        split = "val" if is_validation_doc(name, doc_index, _worker["val_fraction"]) else "train"
        ids[split].extend(encode(piece))
        if ends:
            ids[split].append(sep_id)
            docs[split] += 1
    dtype = _worker["dtype"]
    return ChunkTokens(np.array(ids["train"], dtype=dtype), np.array(ids["val"], dtype=dtype),
                       docs["train"], docs["val"], len(chunk.data), os.getpid(),
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
        stats["max_chunk_bytes"] = max(stats["max_chunk_bytes"], len(chunk.data))
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


def describe_inputs(files: list[Path], previous: list[dict] | None = None) -> list[dict]:
    """Path, size, mtime and sha256 of each input; a previous hash is reused when size and mtime match."""
    known = {d["path"]: d for d in previous or []}
    described = []
    for path in files:
        st = path.stat()
        entry = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        old = known.get(entry["path"])
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            entry["sha256"] = old["sha256"]
        else:
            entry["sha256"] = file_sha256(path)
        described.append(entry)
    return described


def _same_inputs(a: list[dict], b: list[dict]) -> bool:
    """A touched file with the same content is unchanged; mtimes are only a shortcut for hashing."""
    def key(described: list[dict]) -> list[tuple]:
        return [(d["path"], d["size"], d["sha256"]) for d in described]

    return key(a) == key(b)


def _cached_meta(out_dir: Path, files: list[Path], fingerprint: str, options: dict) -> dict | None:
    """The existing meta.json when it describes exactly this preparation and its files are intact."""
    if not (out_dir / META_NAME).exists():
        return None
    try:
        meta = read_meta(out_dir)
    except DataError:
        return None
    if (meta.get("format_version") != FORMAT_VERSION or meta.get("tokenizer_fingerprint") != fingerprint
            or meta.get("options") != options):
        return None
    try:
        for split in SPLITS:
            info = meta["splits"][split]
            expected = info["num_tokens"] * np.dtype(meta["dtype"]).itemsize
            path = out_dir / info["file"]
            if not path.exists() or path.stat().st_size != expected:
                return None
        if options["val_fraction"] > 0 and meta["splits"]["val"]["num_tokens"] == 0:
            return None  # built before the last-tokens rule (_cut_validation_tail), which fills val
    except (KeyError, TypeError, ValueError):  # a meta.json edited by hand: rebuild rather than trust it
        return None
    current = describe_inputs(files, meta.get("inputs"))
    return meta if _same_inputs(current, meta.get("inputs", [])) else None


def _fsync_and_replace(tmp: Path, final: Path) -> None:
    fsync_path(tmp)
    os.replace(tmp, final)


def prepare_corpus(
    inputs: list[str | Path],
    tokenizer: Any,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    val_fraction: float = 0.01,
    separator: str = "<|endoftext|>",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    replace_invalid_utf8: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize `inputs` into out_dir/{train,val}.bin + meta.json and return the meta (see module doc)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if separator not in tokenizer.special_tokens:
        raise DataError(f"the tokenizer has no special token {separator!r} (it has "
                        f"{tokenizer.special_tokens}); train it with that special token or pass the "
                        "separator it uses")
    workers = max(1, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    files = resolve_inputs(inputs)
    dtype = token_dtype(tokenizer.vocab_size)
    options = {"separator": separator, "val_fraction": val_fraction,
               "replace_invalid_utf8": replace_invalid_utf8, "dtype": dtype.name}
    if not force:
        cached = _cached_meta(out_dir, files, tokenizer.fingerprint, options)
        if cached is not None:
            print(f"{out_dir} is up to date (inputs, tokenizer and options match {META_NAME}); nothing to do")
            return cached

    described = describe_inputs(files)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_NAME).unlink(missing_ok=True)  # from here on the directory does not look prepared
    tmp = {s: out_dir / f".{s}.bin.tmp" for s in SPLITS}
    init_args = (tokenizer, separator, val_fraction, replace_invalid_utf8, dtype.name)
    # in meta's build stats: "spawn" where "fork" was expected means a thread was running (see _start_method)
    start_method = _start_method() if workers > 1 else "none"
    stats = {"chunks": 0, "max_chunk_bytes": 0, "max_in_flight": 0, "start_method": start_method}
    worker_cpu: dict[int, float] = collections.defaultdict(float)
    cpu_started = time.process_time()
    totals = {"train_tokens": 0, "val_tokens": 0, "train_docs": 0, "val_docs": 0, "bytes": 0}
    started = time.perf_counter()
    try:
        chunks = (c for path in files for c in iter_chunks(path, chunk_size, separator))
        with _worker_pool(workers, init_args, start_method) as pool, \
                open(tmp["train"], "wb") as f_train, open(tmp["val"], "wb") as f_val, \
                _progress_bar(sum(d["size"] for d in described), files, progress) as bar:
            for result in _ordered_results(pool, chunks, 2 * workers, stats):
                result.train.tofile(f_train)
                result.val.tofile(f_val)
                totals["train_tokens"] += result.train.size
                totals["val_tokens"] += result.val.size
                totals["train_docs"] += result.train_docs
                totals["val_docs"] += result.val_docs
                totals["bytes"] += result.num_bytes
                worker_cpu[result.worker] += result.cpu_seconds
                _on_chunk_written(totals)
                bar.update(result.num_bytes)
        if totals["train_docs"] + totals["val_docs"] == 0:
            raise DataError(f"empty corpus: no documents in {', '.join(str(f) for f in files)}")
        val_split = "documents"
        if val_fraction > 0 and (totals["train_docs"] == 0 or totals["val_docs"] == 0):
            _cut_validation_tail(tmp, totals, val_fraction, dtype, tokenizer.token_id(separator))
            val_split = "last tokens"
        for split in SPLITS:
            _fsync_and_replace(tmp[split], out_dir / f"{split}.bin")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
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
        "splits": {s: {"file": f"{s}.bin", "num_tokens": totals[f"{s}_tokens"],
                       "num_documents": totals[f"{s}_docs"]} for s in SPLITS},
        "val_split": val_split,
        "num_input_bytes": totals["bytes"],
        "bytes_per_token": totals["bytes"] / max(num_tokens, 1),
        "options": options,
        "inputs": described,
        "build": {**stats, "chunk_size": chunk_size, "workers": workers, **timing},
    }
    write_meta(out_dir, meta)
    _print_summary(meta, out_dir, seconds)
    return meta


def _cut_validation_tail(tmp: dict[str, Path], totals: dict[str, int], val_fraction: float,
                         dtype: np.dtype, sep_id: int) -> None:
    """Whole documents left one split empty: make `val` the last val_fraction of all the tokens instead
    (at least one token), cut from the end of the token stream in input order. A document counts in the
    split that holds its separator, so the one cut in two counts in `val`."""
    if totals["train_docs"] == 0:  # everything went to val: it is the whole stream, in input order
        os.replace(tmp["val"], tmp["train"])
        tmp["val"].write_bytes(b"")
    num_tokens = totals["train_tokens"] + totals["val_tokens"]
    num_docs = totals["train_docs"] + totals["val_docs"]
    cut = num_tokens - max(1, math.ceil(num_tokens * val_fraction))
    val_docs = 0
    with open(tmp["train"], "r+b") as src, open(tmp["val"], "wb") as dst:
        src.seek(cut * dtype.itemsize)
        while (block := np.fromfile(src, dtype=dtype, count=1 << 20)).size:  # bounded memory
            block.tofile(dst)
            val_docs += int(np.count_nonzero(block == sep_id))
        src.truncate(cut * dtype.itemsize)
    totals.update(train_tokens=cut, val_tokens=num_tokens - cut, train_docs=num_docs - val_docs,
                  val_docs=val_docs)


def _on_chunk_written(totals: dict[str, int]) -> None:
    """Hook after each chunk is appended (tests make it raise to simulate a crash mid-run)."""


def _progress_bar(total_bytes: int, files: list[Path], enabled: bool) -> Any:
    # Sizes of .gz inputs are compressed sizes while progress counts decompressed bytes: no total then.
    total = None if any(f.name.lower().endswith(".gz") for f in files) else total_bytes
    return progress_bar(enabled, total=total, unit="B", unit_scale=True, unit_divisor=1000,
                        desc="tokenizing", file=sys.stderr)


def _print_summary(meta: dict, out_dir: Path, seconds: float) -> None:
    s = meta["splits"]
    mb = meta["num_input_bytes"] / 1e6
    print(f"prepared {out_dir}: {s['train']['num_documents']:,} train + "
          f"{s['val']['num_documents']:,} val documents, "
          f"{s['train']['num_tokens']:,} train + {s['val']['num_tokens']:,} val tokens ({meta['dtype']}), "
          f"{meta['bytes_per_token']:.2f} bytes/token, {mb:.1f} MB in {seconds:.1f} s "
          f"({mb / max(seconds, 1e-9):.2f} MB/s)")
    if meta["val_split"] == "last tokens":
        num_docs = s["train"]["num_documents"] + s["val"]["num_documents"]
        print(f"note: whole documents left a split empty ({num_docs} in all), so val is the last "
              f"{meta['options']['val_fraction']:g} of the tokens instead; separate documents with "
              f"{meta['separator']!r} to hold out whole ones", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_llm.data.prepare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help=".txt/.jsonl(.gz) files, directories or globs")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (or its json file)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--separator", default="<|endoftext|>")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per work unit")
    parser.add_argument("--replace-invalid-utf8", action="store_true", help="substitute U+FFFD for bad bytes")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from dist_llm.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.load(args.tokenizer)
        prepare_corpus(args.input, tokenizer, args.out, workers=args.workers, val_fraction=args.val_fraction,
                       separator=args.separator, chunk_size=args.chunk_size,
                       replace_invalid_utf8=args.replace_invalid_utf8, force=args.force,
                       progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
