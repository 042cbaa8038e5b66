"""Benchmark: BPE training vs HF `tokenizers`, encoding vs `tiktoken`, peak training memory.

    python bench/bench_tokenizer.py ../shared/data/shakespeare_complete.txt:10000 \\
        ../shared/data/shakespeare_complete.txt:10000:10 ../shared/data/corpus.en:500

Each corpus is PATH[:VOCAB[:REPEAT]] (VOCAB defaults to 10000; REPEAT > 1 benchmarks a temporary
file holding the corpus REPEAT times, e.g. 50 MB from the 5 MB Shakespeare). Every training run
happens in a fresh subprocess, timed inside it around the training call only (imports excluded),
in rounds of [ours 1 worker, ours 2 workers, HF with RAYON_NUM_THREADS=2]; a ratio is computed
within each round and the table shows medians over rounds, so load from other processes hits
both sides of a ratio alike. Encoding compares `Tokenizer.encode` (a fresh Tokenizer each round,
so the pre-token cache starts cold) with `tiktoken` built from the same vocabulary (ranks = our
ids, the GPT-2 pattern, the same special token), single thread, and checks the ids are identical.
Peak memory: VmHWM of the training process itself (HF: its only process), and ru_maxrss of its
largest worker process (RUSAGE_CHILDREN; a forked worker's RSS includes pages shared with its parent).
Needs the bench extra: pip install -e .[bench]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPECIAL = "<|endoftext|>"


# ----------------------------------------------------------------------------- subprocess bodies
def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM on Linux (ru_maxrss can carry over the forking parent's peak
    across exec), else ru_maxrss."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_ours(path: str, vocab_size: int, workers: int, save_dir: str | None) -> dict:
    import resource

    from dist_llm.tokenizer import Tokenizer, train_bpe

    start = time.perf_counter()
    vocab, merges = train_bpe(path, vocab_size, [SPECIAL], num_workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    if save_dir:
        Tokenizer(vocab, merges, [SPECIAL]).save(save_dir)
    return {
        "time": elapsed,
        "rss_main_mb": _peak_rss_mb(),
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "vocab": len(vocab),
    }


def _train_hf(path: str, vocab_size: int) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tok.train([path], trainer)
    elapsed = time.perf_counter() - start
    return {"time": elapsed, "rss_main_mb": _peak_rss_mb(), "vocab": tok.get_vocab_size()}


def _in_subprocess(args: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--_child", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark subprocess failed: {' '.join(args)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- measurements
def bench_training(path: str, vocab_size: int, rounds: int, save_dir: str) -> dict:
    rows: dict[str, list] = {"ours1": [], "ours2": [], "hf": [], "ratio1": [], "ratio2": []}
    mem = {}
    for r in range(rounds):
        one = _in_subprocess(["ours", path, str(vocab_size), "1", save_dir if r == 0 else ""])
        two = _in_subprocess(["ours", path, str(vocab_size), "2", ""])
        hf = _in_subprocess(["hf", path, str(vocab_size)], env={"RAYON_NUM_THREADS": "2"})
        rows["ours1"].append(one["time"])
        rows["ours2"].append(two["time"])
        rows["hf"].append(hf["time"])
        rows["ratio1"].append(one["time"] / hf["time"])
        rows["ratio2"].append(two["time"] / hf["time"])
        mem = {"main": two["rss_main_mb"], "worker": two["rss_worker_mb"], "hf": hf["rss_main_mb"]}
        print(
            f"  round {r + 1}: ours 1w {one['time']:.2f}s, 2w {two['time']:.2f}s, HF {hf['time']:.2f}s",
            flush=True,
        )
    result = {k: statistics.median(v) for k, v in rows.items()}
    result["mem"] = mem
    return result


def bench_encoding(path: str, tokenizer_dir: str, rounds: int) -> dict:
    import tiktoken

    from dist_llm.tokenizer import Tokenizer
    from dist_llm.tokenizer.pretokenize import GPT2_PATTERN

    text = Path(path).read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    saved = Tokenizer.load(tokenizer_dir)
    special = {SPECIAL: saved.token_id(SPECIAL)}
    ranks = {token: i for i, token in saved.vocab.items() if i != special[SPECIAL]}
    enc = tiktoken.Encoding("ours", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
    ours_t, tik_t, ratios, build_t = [], [], [], []
    same = True
    for _ in range(rounds):
        start = time.perf_counter()
        tok = Tokenizer(saved.vocab, saved.merges, saved.special_tokens)  # a cold pre-token cache
        build_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = tok.encode(text)
        ours_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = enc.encode(text, allowed_special="all")
        tik_t.append(time.perf_counter() - start)
        ratios.append(tik_t[-1] / ours_t[-1])
        same = same and ours == theirs
    return {
        "ours_mbs": megabytes / statistics.median(ours_t),
        "tik_mbs": megabytes / statistics.median(tik_t),
        "ratio": statistics.median(ratios),
        "same": same,
        "build_s": statistics.median(build_t),
    }


def parse_spec(spec: str) -> tuple[Path, int, int]:
    parts = spec.split(":")
    numbers = []
    while len(parts) > 1 and parts[-1].isdigit() and len(numbers) < 2:
        numbers.insert(0, int(parts.pop()))
    vocab = numbers[0] if numbers else 10_000
    repeat = numbers[1] if len(numbers) > 1 else 1
    return Path(":".join(parts)), vocab, repeat


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--_child":
        args = json.loads(sys.argv[2])
        result = (
            _train_hf(args[1], int(args[2]))
            if args[0] == "hf"
            else _train_ours(args[1], int(args[2]), int(args[3]), args[4] or None)
        )
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", nargs="+", help="PATH[:VOCAB[:REPEAT]]")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; medians are reported")
    args = parser.parse_args()

    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    table = []
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        for n, spec in enumerate(args.corpus):
            path, vocab, repeat = parse_spec(spec)
            if not path.is_file():
                raise SystemExit(f"corpus {str(path)!r} does not exist")
            data_path = path
            if repeat > 1:
                data_path = Path(tmp) / f"{path.name}.x{repeat}"
                with open(data_path, "wb") as f:
                    for _ in range(repeat):
                        f.write(path.read_bytes())
            size_mb = data_path.stat().st_size / 1e6
            print(f"{path.name} x{repeat} ({size_mb:.1f} MB), vocab {vocab}", flush=True)
            tok_dir = str(Path(tmp) / f"tok{n}")
            train = bench_training(str(data_path), vocab, args.rounds, tok_dir)
            encode = bench_encoding(str(data_path), tok_dir, args.rounds) if repeat == 1 else None
            table.append((path.name + (f" x{repeat}" if repeat > 1 else ""), size_mb, vocab, train, encode))
            if repeat > 1:
                data_path.unlink()

    print()
    columns = [
        "corpus", "MB", "vocab", "ours 1 worker (s)", "ours 2 workers (s)", "HF 2 threads (s)",
        "time ours 1w / HF", "time ours 2w / HF", "encode ours (MB/s)", "tiktoken (MB/s)",
        "speed ours / tiktoken", "ids equal", "peak RSS ours main / worker / HF (MB)",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, size_mb, vocab, t, e in table:
        enc = (
            f"{e['ours_mbs']:.1f} | {e['tik_mbs']:.1f} | {e['ratio']:.2f}x | {e['same']}"
            if e
            else "- | - | - | -"
        )
        mem = t["mem"]
        worker = f"{mem['worker']:.0f}" if mem["worker"] else "none started"
        print(
            f"| {name} | {size_mb:.1f} | {vocab} | {t['ours1']:.2f} | {t['ours2']:.2f} | {t['hf']:.2f} "
            f"| {t['ratio1']:.2f} | {t['ratio2']:.2f} | {enc} "
            f"| {mem['main']:.0f} / {worker} / {mem['hf']:.0f} |"
        )
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    encodes = [e for *_, e in table if e]
    if encodes:
        builds = ", ".join(f"{e['build_s'] * 1000:.0f} ms" for e in encodes)
        print(f"\nTokenizer construction (not in the encode time; ranks and whole-token table): {builds}")


if __name__ == "__main__":
    main()
