"""Benchmark: BPE training vs HF `tokenizers`, encoding vs `tiktoken`, peak training memory.

    python bench/bench_tokenizer.py ../shared/data/shakespeare_complete.txt:10000 \\
        ../shared/data/shakespeare_complete.txt:10000:10 ../shared/data/corpus.en:500
    python bench/bench_tokenizer.py --encode-only --rounds 5 ../shared/data/shakespeare_complete.txt

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
Web-like rows (--web-like, on by default; --encode-only skips the training rounds): the first corpus
read as it is; a web-like version of it (in 1 line of 20 "'" becomes "’" and " - " becomes " — "); the
same with a multilingual line after every 100th line; and about 1 MB of multilingual lines alone,
all encoded with the tokenizer trained on that corpus, in rounds that time every text
with ours and tiktoken; each ratio is taken within a round (ours on a text / ours on the corpus as it
is, ours / tiktoken), and medians over rounds are shown, for wall time and for CPU time. The warm
column encodes the text a second time with the same Tokenizer (every pre-token cached): the steady
state of a data-preparation worker on a large corpus, where first-time BPE is rare.
Targets: web-like >= 0.6x tiktoken and >= 0.9x our speed on the ASCII text.
Needs the bench extra: pip install -e .[bench]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
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


# Made up for the benchmark: everyday sentences in scripts and languages web text mixes in.
MULTILINGUAL = [
    "L’été dernier, nous sommes allés à la mer ; c’était très agréable, même s’il a plu.",
    "Die Straße war nass, aber wir haben trotzdem einen schönen Spaziergang gemacht.",
    "¿Dónde está la estación? Necesito comprar un billete para mañana por la mañana.",
    "Вчера вечером мы долго гуляли по городу и разговаривали о книгах.",
    "Η θάλασσα ήταν ήρεμη και ο ουρανός καθαρός όλη την ημέρα.",
    "我们明天早上九点在图书馆门口见面，然后一起去吃早饭。",
    "今日はとても暑かったので、友達と一緒に冷たいお茶を飲みました。",
    "오늘 날씨가 정말 좋아서 공원에서 산책을 했어요.",
    "ذهبنا إلى السوق صباحًا واشترينا الخبز والفاكهة.",
    "हम कल सुबह जल्दी उठकर पहाड़ों की ओर निकलेंगे।",
    "Çok güzel bir gün geçirdik; akşam yemeğinde balık yedik.",
    "Prices rose 3½% in Q2 — “a surprise,” analysts said 🙂 (see §4, p. 12).",
]


def web_like_text(text: str, multilingual_every: int = 0) -> str:
    """ASCII prose made web-like: in 1 line of 20 "'" becomes "’" and " - " becomes " — "; with
    multilingual_every = k, a line of multilingual_text follows every k-th line."""
    lines = text.splitlines(keepends=True)
    extra = itertools.cycle(multilingual_text(len(lines) * 150e-6 / max(1, multilingual_every)).splitlines())
    out = []
    for i, line in enumerate(lines):
        out.append(line.replace("'", "’").replace(" - ", " — ") if i % 20 == 0 else line)
        if multilingual_every and i % multilingual_every == multilingual_every - 1:
            out.append(next(extra) + "\n")
    return "".join(out)


def multilingual_text(megabytes: float = 1.0, seed: int = 0) -> str:
    """Lines made from MULTILINGUAL with their words (characters, for text without spaces) shuffled,
    so most lines are new, as in a real corpus, rather than one sample repeated."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < megabytes * 1e6:
        sentence = rng.choice(MULTILINGUAL)
        parts = sentence.split(" ") if " " in sentence else list(sentence)
        rng.shuffle(parts)
        lines.append((" " if " " in sentence else "").join(parts))
        size += len(lines[-1].encode("utf-8")) + 1
    return "\n".join(lines) + "\n"


def _timed(fn):  # noqa: ANN001, ANN202
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_encoding(texts: dict[str, str], tokenizer_dir: str, rounds: int) -> dict[str, dict]:
    """Times ours (a cold cache each time) and tiktoken on each text in every round; ratios are taken
    within a round, against tiktoken and against ours on the first text, for wall and CPU time."""
    import tiktoken

    from dist_llm.tokenizer import Tokenizer
    from dist_llm.tokenizer.pretokenize import GPT2_PATTERN, pretokenize

    saved = Tokenizer.load(tokenizer_dir)
    special = {SPECIAL: saved.token_id(SPECIAL)}
    ranks = {token: i for i, token in saved.vocab.items() if i != special[SPECIAL]}
    enc = tiktoken.Encoding("ours", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
    base = next(iter(texts))
    runs: dict[str, list] = {name: [] for name in texts}
    build_t = []
    for _ in range(rounds):
        for name, text in texts.items():
            tok, build, _ = _timed(lambda: Tokenizer(saved.vocab, saved.merges, saved.special_tokens))
            build_t.append(build)
            ours, wall, cpu = _timed(lambda t=tok, x=text: t.encode(x))
            theirs, tik_wall, tik_cpu = _timed(lambda x=text: enc.encode(x, allowed_special="all"))
            _, _, warm_cpu = _timed(lambda t=tok, x=text: t.encode(x))  # every pre-token cached now
            _, _, split_cpu = _timed(lambda x=text: pretokenize(x))  # the regex pass alone
            runs[name].append({"wall": wall, "cpu": cpu, "tik_wall": tik_wall, "tik_cpu": tik_cpu,
                               "warm_cpu": warm_cpu, "split_cpu": split_cpu,
                               "same": ours == theirs})  # fmt: skip
    base_mb = len(texts[base].encode("utf-8")) / 1e6
    results = {}
    for name, text in texts.items():
        megabytes = len(text.encode("utf-8")) / 1e6
        rs = runs[name]
        pairs = list(zip(rs, runs[base], strict=True))
        results[name] = {
            "mb": megabytes,
            "ours_mbs": megabytes / statistics.median(r["wall"] for r in rs),
            "tik_mbs": megabytes / statistics.median(r["tik_wall"] for r in rs),
            "ratio": statistics.median(r["tik_wall"] / r["wall"] for r in rs),
            "ratio_cpu": statistics.median(r["tik_cpu"] / r["cpu"] for r in rs),
            "ratio_warm_cpu": statistics.median(r["tik_cpu"] / r["warm_cpu"] for r in rs),
            "vs_base": statistics.median(megabytes / r["wall"] / (base_mb / b["wall"]) for r, b in pairs),
            "vs_base_cpu": statistics.median(megabytes / r["cpu"] / (base_mb / b["cpu"]) for r, b in pairs),
            "same": all(r["same"] for r in rs),
            # where a cold encode's CPU time goes: the regex pass, the cache look-ups and flattening
            # (warm encode minus the regex pass), first-time BPE (cold minus warm); medians over rounds
            "split_s": statistics.median(r["split_cpu"] for r in rs),
            "lookup_s": statistics.median(r["warm_cpu"] - r["split_cpu"] for r in rs),
            "first_bpe_s": statistics.median(r["cpu"] - r["warm_cpu"] for r in rs),
            "tik_s": statistics.median(r["tik_cpu"] for r in rs),
            "build_s": statistics.median(build_t),
        }
    return results


def print_encode_costs(results: dict[str, dict]) -> None:
    print("\nWhere a cold encode's CPU time goes (s, medians over rounds; look-ups = warm encode - regex "
          "pass, first-time BPE = cold encode - warm encode)\n")
    print("| text | regex pass | look-ups + flattening | first-time BPE | tiktoken's whole encode |")
    print("|---|---|---|---|---|")
    for text, r in results.items():
        print(f"| {text} | {r['split_s']:.3f} | {r['lookup_s']:.3f} | {r['first_bpe_s']:.3f} "
              f"| {r['tik_s']:.3f} |")


def print_web_like_table(name: str, results: dict[str, dict]) -> None:
    print(f"\nEncoding, tokenizer trained on {name} (ratios: medians of per-round ratios)\n")
    print("| text | MB | ours (MB/s) | tiktoken (MB/s) | ours / tiktoken (wall, CPU) "
          "| ours / ours on the first text (wall, CPU) | warm cache: ours / tiktoken (CPU) | ids equal |")
    print("|---|---|---|---|---|---|---|---|")
    for text, r in results.items():
        print(f"| {text} | {r['mb']:.1f} | {r['ours_mbs']:.2f} | {r['tik_mbs']:.2f} "
              f"| {r['ratio']:.2f}x, {r['ratio_cpu']:.2f}x | {r['vs_base']:.2f}x, {r['vs_base_cpu']:.2f}x "
              f"| {r['ratio_warm_cpu']:.2f}x | {r['same']} |")


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
    parser.add_argument("--web-like", action=argparse.BooleanOptionalAction, default=True,
                        help="web-like and multilingual encoding rows for the first corpus (default: on)")
    parser.add_argument("--encode-only", action="store_true",
                        help="skip the training rounds: train each tokenizer once, untimed")
    args = parser.parse_args()

    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    table = []
    web_like: dict[str, dict] = {}
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
            if args.encode_only:
                _in_subprocess(["ours", str(data_path), str(vocab), "1", tok_dir])
                train = None
            else:
                train = bench_training(str(data_path), vocab, args.rounds, tok_dir)
            encode = None
            if repeat == 1:
                text = data_path.read_text(encoding="utf-8")
                texts = {path.name: text}
                if args.web_like and not web_like:
                    texts.update({
                        "web-like": web_like_text(text),
                        "web-like + a multilingual line every 100": web_like_text(text, 100),
                        "multilingual": multilingual_text(),
                    })  # fmt: skip
                results = bench_encoding(texts, tok_dir, args.rounds)
                encode = results.pop(path.name)
                if results:
                    web_like = {path.name: encode, **results}
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
        if t is None:  # --encode-only
            print(f"| {name} | {size_mb:.1f} | {vocab} | - | - | - | - | - | {enc} | - |")
            continue
        mem = t["mem"]
        worker = f"{mem['worker']:.0f}" if mem["worker"] else "none started"
        print(
            f"| {name} | {size_mb:.1f} | {vocab} | {t['ours1']:.2f} | {t['ours2']:.2f} | {t['hf']:.2f} "
            f"| {t['ratio1']:.2f} | {t['ratio2']:.2f} | {enc} "
            f"| {mem['main']:.0f} / {worker} / {mem['hf']:.0f} |"
        )
    if web_like:
        print_web_like_table(next(iter(web_like)), web_like)
        print_encode_costs(web_like)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    encodes = [e for *_, e in table if e]
    if encodes:
        builds = ", ".join(f"{e['build_s'] * 1000:.0f} ms" for e in encodes)
        print(f"\nTokenizer construction (not in the encode time; ranks and whole-token table): {builds}")


if __name__ == "__main__":
    main()
