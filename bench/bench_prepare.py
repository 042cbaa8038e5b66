"""Corpus preparation throughput: dist_llm.data.prepare with N workers vs tiktoken in one thread.

    python bench/bench_prepare.py --input ../shared/data/shakespeare_complete.txt --vocab-size 10000
    python bench/bench_prepare.py --input ../shared/data/shakespeare_complete.txt --web-like

Trains (or loads, with --tokenizer DIR) a BPE tokenizer on the input, builds a tiktoken Encoding from
the same merges and the GPT-2 pre-tokenization regex, and times in one run: tiktoken encoding the whole
text in one thread (the baseline), prepare_corpus with 1 worker, and with --workers workers (the full
pipeline: chunking, tokenizing, writing train.bin/val.bin/meta.json, pool start-up included).
The target is a ratio of at least 0.8 for the parallel run.

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
    if args.web_like:
        web_like_row(args, tok, mb)


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
