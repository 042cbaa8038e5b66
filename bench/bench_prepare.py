"""Corpus preparation throughput: dist_llm.data.prepare with N workers vs tiktoken in one thread.

    python bench/bench_prepare.py --input ../shared/data/shakespeare_complete.txt --vocab-size 10000
    python bench/bench_prepare.py --input ../shared/data/shakespeare_complete.txt --web-like

Trains (or loads, with --tokenizer DIR) a BPE tokenizer on the input, builds a tiktoken Encoding from
the same merges and the GPT-2 pre-tokenization regex, and times in one run: tiktoken encoding the whole
text in one thread (the baseline), prepare_corpus with 1 worker, and with --workers workers (the full
pipeline: chunking, tokenizing, writing train.bin/val.bin/meta.json, pool start-up included).
The target is a ratio of at least 0.8 for the parallel run.

Two more tables (format_table, worker_scaling; --no-formats / --no-scaling skip them): prepare's
throughput with 1 worker from Parquet and from zstd-compressed JSONL against the same documents as plain
text (target: at least 0.8x of plain text), and prepare of plain text with 1, 2 and all cores' workers.
The documents for those are the input cut at paragraph breaks into pieces of about 4 KB, like web pages.

The parallel run is timed in --rounds rounds, each right after a tiktoken run, and the ratio of each
such pair is taken: the median of those paired ratios is the headline figure, since load from other
processes that drifts over the run slows both members of a pair alike.

On a shared machine the wall ratios say as much about the other load as about this code, so each row
also gets a CPU-bound figure: the critical path if every process had a free core. For tiktoken and
encode that is their CPU time; for prepare it is the busiest worker's CPU time plus all of the main
process's own CPU time (counted as if none of it overlapped the workers), both from meta.json's build
stats. Run it a few times and compare medians; note the load average that each run prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SEP = "<|endoftext|>"


def tiktoken_from(tokenizer):  # noqa: ANN001, ANN201
    """A tiktoken Encoding with the same merges: single bytes rank 0..255, then merges in order."""
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)}
    for left, right in tokenizer.merges:
        ranks.setdefault(left + right, len(ranks))
    return tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={SEP: len(ranks)})


def timed(fn, repeats: int = 1):  # noqa: ANN001, ANN201
    """(result, best wall seconds, CPU seconds of that run in this process and its reaped children).

    The minimum wall time is the least disturbed by other load; the CPU time shows the work itself,
    which on a busy machine can be much less than workers x wall time.
    """
    best, best_cpu, best_result = float("inf"), 0.0, None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), os.times()
        result = fn()
        wall, c1 = time.perf_counter() - t0, os.times()
        if wall < best:
            best, best_result = wall, result
            best_cpu = (c1.user + c1.system + c1.children_user + c1.children_system
                        - c0.user - c0.system - c0.children_user - c0.children_system)
    return best_result, best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default="../shared/data/shakespeare_complete.txt")
    parser.add_argument("--vocab-size", type=int, default=10000)
    parser.add_argument("--tokenizer", help="a saved tokenizer directory (default: train one on the input)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    parser.add_argument("--rounds", type=int, default=5,
                        help="tiktoken / parallel prepare pairs for the median paired ratio")
    parser.add_argument("--no-formats", action="store_true", help="skip the Parquet / zstd JSONL table")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1 / 2 / all-cores table")
    parser.add_argument("--web-like", action="store_true",
                        help="also time prepare on a web-like copy of the input against the input itself "
                             "(bench_tokenizer.web_like_text; target: at least 0.8x the speed on the input)")
    args = parser.parse_args()

    from dist_llm.data.prepare import prepare_corpus
    from dist_llm.tokenizer import Tokenizer, train_bpe

    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
    else:
        (vocab, merges), seconds, _ = timed(lambda: train_bpe(args.input, args.vocab_size, [SEP]))
        tok = Tokenizer(vocab, merges, [SEP])
        print(f"trained a {tok.vocab_size}-token BPE on {args.input} in {seconds:.1f} s")
    text = Path(args.input).read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6

    enc = tiktoken_from(tok)
    tik_ids, tik_s, cpu = timed(lambda: enc.encode(text, allowed_special="all"), args.repeats)
    tik_cpu = cpu
    rows = [("tiktoken, 1 thread (baseline)", tik_s, cpu, cpu, len(tik_ids))]
    # Tokenizer.encode alone on a fresh copy (cold pre-token cache, as in a worker): the bound for prepare.
    fresh = [Tokenizer(tok.vocab, tok.merges, [SEP]) for _ in range(args.repeats * 3)]
    ids, seconds, cpu = timed(lambda: fresh.pop().encode(text), args.repeats)
    rows.append(("dist_llm Tokenizer.encode only, 1 process", seconds, cpu, cpu, len(ids)))
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            # a fresh tokenizer per run: no pre-token cache carried over from the previous run
            meta, seconds, cpu = timed(lambda w=workers: prepare_corpus(
                [args.input], fresh.pop(), Path(tmp) / f"w{w}", workers=w, force=True, progress=False),
                args.repeats)
            tokens = sum(s["num_tokens"] for s in meta["splits"].values())
            name = f"dist_llm prepare, {workers} worker{'s' if workers > 1 else ''}"
            if workers > 1:
                name += f" ({meta['build']['start_method']})"
            build = meta["build"]
            critical = max(build["worker_cpu_seconds"]) + build["main_cpu_seconds"]
            rows.append((name, seconds, cpu, critical, tokens))
        paired, rounds = [], []
        for _ in range(args.rounds):
            cold = Tokenizer(tok.vocab, tok.merges, [SEP])  # built outside the timing, cache empty
            _, tik_round, _ = timed(lambda: enc.encode(text, allowed_special="all"))
            meta, prep_round, _ = timed(lambda t=cold: prepare_corpus(
                [args.input], t, Path(tmp) / "paired", workers=args.workers, force=True, progress=False))
            paired.append(tik_round / prep_round)
            rounds.append(f"tiktoken {tik_round:.2f} s, prepare {prep_round:.2f} s "
                          f"(worker CPU s {meta['build']['worker_cpu_seconds']})")
    # The same merges give the same tokens, except that prepare drops the newlines around separators.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.input}: {mb:.2f} MB, vocab {tok.vocab_size}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}, best of {args.repeats}\n")
    print("| pipeline | wall s | MB/s | ratio vs tiktoken | CPU s (all processes) "
          "| CPU critical path s | ratio if each process had a core | tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, seconds, cpu, critical, tokens in rows:
        print(f"| {name} | {seconds:.2f} | {mb / seconds:.2f} | {tik_s / seconds:.2f}x | {cpu:.2f} "
              f"| {critical:.2f} | {tik_cpu / critical:.2f}x | {tokens:,} |")
    print(f"\nprepare with {args.workers} workers / tiktoken, {args.rounds} paired rounds: median "
          f"{statistics.median(paired):.2f}x (each round: {', '.join(f'{r:.2f}' for r in paired)})")
    print("\n".join(f"  round {i}: {line}" for i, line in enumerate(rounds)))
    if not args.no_formats:
        format_table(text, tok, args.repeats)
    if not args.no_scaling:
        worker_scaling(text, tok, args.repeats)
    if args.web_like:
        web_like_row(args, tok, mb)


def web_like_documents(text: str, size: int = 4000) -> list[str]:
    """The text cut at paragraph breaks into documents of about `size` characters."""
    docs, current, length = [], [], 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        length += len(paragraph) + 2
        if length >= size:
            docs.append("\n\n".join(current).strip("\r\n"))
            current, length = [], 0
    docs.append("\n\n".join(current).strip("\r\n"))
    return [d for d in docs if d.strip()]


def write_formats(docs: list[str], directory: Path) -> dict[str, Path]:
    """The same documents as plain text, Parquet (zstd-compressed pages, like FineWeb) and .jsonl.zst."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    paths = {"plain text (.txt)": directory / "docs.txt", "Parquet": directory / "docs.parquet",
             "zstd JSONL (.jsonl.zst)": directory / "docs.jsonl.zst"}
    paths["plain text (.txt)"].write_text(SEP.join(docs), encoding="utf-8")
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), paths["Parquet"],
                   compression="zstd", row_group_size=1000)
    jsonl = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    paths["zstd JSONL (.jsonl.zst)"].write_bytes(zstandard.ZstdCompressor(level=3).compress(jsonl))
    return paths


def _best_runs(paths: dict[str, Path], tok, workers: dict[str, int], repeats: int,  # noqa: ANN001
               out: Path) -> dict[str, tuple[float, dict]]:
    """{name: (best wall s, its meta)} of prepare_corpus per file, the rows interleaved in each of
    `repeats` rounds so that load from other processes that drifts over the run hits every row alike."""
    from dist_llm.data.prepare import prepare_corpus
    from dist_llm.tokenizer import Tokenizer

    best: dict[str, tuple[float, dict]] = {}
    for _ in range(repeats):
        for name, path in paths.items():
            fresh = Tokenizer(tok.vocab, tok.merges, [SEP])  # a cold pre-token cache, built untimed
            with contextlib.redirect_stdout(io.StringIO()):  # prepare's summary line would split the table
                meta, seconds, _ = timed(lambda p=path, t=fresh, n=name: prepare_corpus(
                    [p], t, out, workers=workers[n], force=True, progress=False))
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, meta)
    return best


def format_table(text: str, tok, repeats: int) -> None:  # noqa: ANN001
    """Throughput of one prepare worker per input format, against plain text of the same documents."""
    docs = web_like_documents(text)
    text_mb = len(SEP.join(docs).encode()) / 1e6
    print(f"\nprepare throughput per worker by input format ({len(docs):,} documents of ~4 KB, "
          f"{text_mb:.1f} MB of text, 1 worker, best of {repeats} interleaved rounds; target >= 0.8x plain "
          "text)\n")
    print("| input | file MB | wall s | text MB/s | ratio vs plain text | CPU critical path s "
          "| ratio if each process had a core | tokens |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_formats(docs, Path(tmp))
        best = _best_runs(paths, tok, dict.fromkeys(paths, 1), repeats, Path(tmp) / "out")
        base, base_critical = best["plain text (.txt)"][0], _critical_path(best["plain text (.txt)"][1])
        for name, (seconds, meta) in best.items():
            critical = _critical_path(meta)
            tokens = sum(s["num_tokens"] for s in meta["splits"].values())
            size = paths[name].stat().st_size / 1e6
            print(f"| {name} | {size:.2f} | {seconds:.2f} | {text_mb / seconds:.2f} | {base / seconds:.2f}x "
                  f"| {critical:.2f} | {base_critical / critical:.2f}x | {tokens:,} |")


def _critical_path(meta: dict) -> float:
    """The busiest worker's CPU s + the main process's own: the wall time if each process had a core."""
    build = meta["build"]
    return max(build["worker_cpu_seconds"]) + build["main_cpu_seconds"]


def worker_scaling(text: str, tok, repeats: int) -> None:  # noqa: ANN001
    """prepare of plain text with 1, 2 and all cores' workers: wall time and speed-up over 1 worker."""
    cores = os.cpu_count() or 1
    counts = sorted({1, min(2, cores), cores})
    mb = len(text.encode()) / 1e6
    print(f"\nprepare scaling with workers (plain text, {mb:.1f} MB, {cores} CPUs, best of {repeats} "
          "interleaved rounds)\n")
    print("| workers | wall s | MB/s | speed-up vs 1 worker | worker CPU s (each) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.txt"
        path.write_text(SEP.join(web_like_documents(text)), encoding="utf-8")
        names = {f"{w}": path for w in counts}
        best = _best_runs(names, tok, {f"{w}": w for w in counts}, repeats, Path(tmp) / "out")
        one = best["1"][0]
        for name, (seconds, meta) in best.items():
            cpu = ", ".join(f"{c:.1f}" for c in meta["build"]["worker_cpu_seconds"])
            print(f"| {name} | {seconds:.2f} | {mb / seconds:.2f} | {one / seconds:.2f}x | {cpu} |")


def web_like_row(args: argparse.Namespace, tok, mb: float) -> None:  # noqa: ANN001
    """Prepare (--workers workers, cold tokenizers) on the input and on a web-like copy of it, in
    --rounds paired rounds; the median of the per-round speed ratios (MB/s web-like / MB/s input)."""
    from bench_tokenizer import web_like_text

    from dist_llm.data.prepare import prepare_corpus
    from dist_llm.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        web = Path(tmp) / "web_like.txt"
        web.write_text(web_like_text(Path(args.input).read_text(encoding="utf-8")), encoding="utf-8")
        web_mb = web.stat().st_size / 1e6
        ratios, lines = [], []
        for r in range(args.rounds):
            speed = {}
            order = [("input", args.input, mb), ("web-like", web, web_mb)]
            for name, path, size in order[:: 1 if r % 2 else -1]:  # each goes first in every other round
                cold = Tokenizer(tok.vocab, tok.merges, [SEP])
                _, seconds, _ = timed(lambda p=path, t=cold: prepare_corpus(
                    [p], t, Path(tmp) / "out", workers=args.workers, force=True, progress=False))
                speed[name] = size / seconds
            ratios.append(speed["web-like"] / speed["input"])
            lines.append(f"input {speed['input']:.2f} MB/s, web-like {speed['web-like']:.2f} MB/s")
    each = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"\nprepare with {args.workers} workers, web-like ({web_mb:.2f} MB) / input, {args.rounds} paired "
          f"rounds: median {statistics.median(ratios):.2f}x (each round: {each})")
    print("\n".join(f"  round {i}: {line}" for i, line in enumerate(lines)))


if __name__ == "__main__":
    main()
