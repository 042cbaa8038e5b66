"""prepare_corpus: exact token content, parallel == serial, bounded memory, cache, crash safety, bad input."""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

from dist_llm.data import DataError, MemmapTokens, prepare_corpus
from dist_llm.data import prepare as prepare_module
from dist_llm.data.meta import token_dtype
from dist_llm.data.prepare import is_validation_doc
from dist_llm.tokenizer import Tokenizer

SEP = "<|endoftext|>"


def make_tokenizer(extra_merges: int = 0) -> Tokenizer:
    """256 byte tokens + a few merges + the separator: built directly, no training needed."""
    vocab = {i: bytes([i]) for i in range(256)}
    pairs = [(b"t", b"h"), (b"th", b"e"), (b" ", b"the"), (b"a", b"t"), (b" c", b"at")][: 4 + extra_merges]
    pairs.insert(3, (b" ", b"c"))
    merges = []
    for a, b in pairs:
        vocab[len(vocab)] = a + b
        merges.append((a, b))
    return Tokenizer(vocab, merges, [SEP])


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer()


def nasty_docs(rng: random.Random, n: int) -> list[str]:
    """Documents with every kind of whitespace edge: runs of newlines, indentation, tabs, non-ASCII."""
    words = ["the", "cat", "Hello,", "world!", "x=1;", "é", "naïve", "日本", "  indented", "it's", "42", "\t",
             ""]
    docs = []
    for _ in range(n):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
                 for _ in range(rng.randint(1, 40))]
        doc = rng.choice(["\n", "\n\n", "\n\n\n", "\r\n"]).join(lines)
        # line breaks at the very ends would belong to the separator (see sources.py), not to the document
        doc = doc.strip("\r\n")
        docs.append(doc if doc.strip() else "the cat")
    return docs


def expected_ids(tok: Tokenizer, docs_by_file: dict[str, list[str]],
                 val_fraction: float) -> dict[str, list[int]]:
    """The token files' content computed from the documents themselves: encode(doc) + [sep], in order;
    where that leaves a split empty, val is the last val_fraction of all the tokens (at least one)."""
    sep = tok.token_id(SEP)
    out = {"train": [], "val": []}
    for name, docs in docs_by_file.items():
        for i, doc in enumerate(docs):
            out["val" if is_validation_doc(name, i, val_fraction) else "train"] += tok.encode(doc) + [sep]
    if val_fraction > 0 and not (out["train"] and out["val"]):
        stream = out["train"] + out["val"]  # one of them is empty: the stream in input order
        cut = len(stream) - max(1, math.ceil(len(stream) * val_fraction))
        out = {"train": stream[:cut], "val": stream[cut:]}
    return out


def read_split(out_dir, split: str) -> list[int]:
    meta = json.loads((out_dir / "meta.json").read_text())
    return np.fromfile(out_dir / f"{split}.bin", dtype=meta["dtype"]).tolist()


def write_txt(path, docs: list[str], style: str) -> None:
    if style == "newlines":  # "doc\n<|endoftext|>\ndoc\n<|endoftext|>\n"
        text = "".join(d + "\n" + SEP + "\n" for d in docs)
    else:  # "doc<|endoftext|>doc" with no trailing separator
        text = SEP.join(docs)
    path.write_bytes(text.encode("utf-8"))


@pytest.mark.parametrize("chunk_size", [64, 300, 1 << 20])
def test_token_files_hold_each_document_then_the_separator(tmp_path, tok, chunk_size):
    rng = random.Random(chunk_size)
    docs = {"a.txt": nasty_docs(rng, 25), "b.txt.gz": nasty_docs(rng, 25), "c.jsonl": nasty_docs(rng, 20)}
    write_txt(tmp_path / "a.txt", docs["a.txt"], "newlines")
    with gzip.open(tmp_path / "b.txt.gz", "wb") as f:
        f.write(SEP.join(docs["b.txt.gz"]).encode())
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n"
                                              for i, d in enumerate(docs["c.jsonl"])), encoding="utf-8")
    inputs = [tmp_path / "a.txt", tmp_path / "b.txt.gz", tmp_path / "c.jsonl"]
    meta = prepare_corpus(inputs, tok, tmp_path / "out", workers=1, val_fraction=0.2,
                          chunk_size=chunk_size, progress=False)
    want = expected_ids(tok, docs, 0.2)
    assert read_split(tmp_path / "out", "train") == want["train"]
    assert read_split(tmp_path / "out", "val") == want["val"]
    assert want["val"] and want["train"]
    assert meta["splits"]["train"]["num_documents"] + meta["splits"]["val"]["num_documents"] == 70
    assert meta["splits"]["val"]["num_tokens"] == len(want["val"])
    assert meta["dtype"] == "uint16" and meta["tokenizer_fingerprint"] == tok.fingerprint
    assert [os.path.basename(d["path"]) for d in meta["inputs"]] == ["a.txt", "b.txt.gz", "c.jsonl"]


def test_validation_choice_is_whole_documents_near_the_fraction():
    chosen = [is_validation_doc("corpus.txt", i, 0.1) for i in range(5000)]
    assert 0.08 < sum(chosen) / 5000 < 0.12
    assert chosen == [is_validation_doc("corpus.txt", i, 0.1) for i in range(5000)]
    assert not any(is_validation_doc("corpus.txt", i, 0.0) for i in range(100))


@pytest.mark.parametrize("start_method", ["default", "spawn"])
def test_parallel_output_is_byte_identical_and_memory_is_bounded(tmp_path, tok, monkeypatch, start_method):
    if start_method != "default":
        monkeypatch.setattr(prepare_module, "_start_method", lambda: start_method)
    docs = nasty_docs(random.Random(3), 150)
    write_txt(tmp_path / "big.txt", docs, "newlines")
    size = (tmp_path / "big.txt").stat().st_size
    chunk = 2048
    serial = prepare_corpus([tmp_path / "big.txt"], tok, tmp_path / "serial", workers=1, val_fraction=0.1,
                            chunk_size=chunk, progress=False)
    parallel = prepare_corpus([tmp_path / "big.txt"], tok, tmp_path / "parallel", workers=2, val_fraction=0.1,
                              chunk_size=chunk, progress=False)
    for split in ("train", "val"):
        assert (tmp_path / "serial" / f"{split}.bin").read_bytes() == \
               (tmp_path / "parallel" / f"{split}.bin").read_bytes()
    serial_build = serial.pop("build")
    parallel_build = parallel.pop("build")
    assert serial == parallel
    build = parallel_build
    assert build["chunks"] > 10 and size > 10 * chunk
    # at most 2 * workers chunks in flight, each no larger than twice the chunk size (no doc lacks cuts)
    assert build["max_in_flight"] <= 4 and build["max_chunk_bytes"] <= 2 * chunk
    # CPU time per worker process (the serial run tokenizes in the main process: one entry)
    assert len(serial_build["worker_cpu_seconds"]) == 1
    assert serial_build["start_method"] == "none"
    assert build["start_method"] == ("spawn" if start_method == "spawn" else prepare_module._start_method())
    assert 1 <= len(build["worker_cpu_seconds"]) <= 2
    assert all(c >= 0 for c in build["worker_cpu_seconds"]) and build["main_cpu_seconds"] >= 0


def test_progress_bar_leaves_no_thread_behind_so_later_pools_still_fork(tmp_path, tok, capsys):
    # A leftover thread (tqdm's monitor) would make every later preparation in the process spawn its
    # workers instead of forking them: correct output, but about a second of re-imports per worker.
    write_txt(tmp_path / "a.txt", nasty_docs(random.Random(6), 20), "plain")
    threads_before = threading.active_count()
    for run in range(2):
        prepare_corpus([tmp_path / "a.txt"], tok, tmp_path / f"out{run}", workers=1, progress=True)
        assert threading.active_count() == threads_before
    assert "tokenizing" in capsys.readouterr().err  # the bar was shown


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path, tok):
    docs = nasty_docs(random.Random(4), 100)
    write_txt(tmp_path / "small.txt", docs, "plain")
    write_txt(tmp_path / "big.txt", docs * 8, "plain")
    prepare_corpus([tmp_path / "small.txt"], tok, tmp_path / "warm", workers=1, progress=False)  # imports

    def peak_bytes(name: str) -> int:
        tracemalloc.start()
        try:
            prepare_corpus([tmp_path / name], tok, tmp_path / name.replace(".", "_"), workers=1,
                           chunk_size=4096, progress=False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, big = peak_bytes("small.txt"), peak_bytes("big.txt")
    big_size = (tmp_path / "big.txt").stat().st_size
    assert big_size > 500_000
    assert big < 1.3 * small and big < big_size / 2, (small, big, big_size)


def test_rerun_is_a_cache_hit_and_changes_rebuild(tmp_path, tok, capsys):
    docs = nasty_docs(random.Random(5), 10)
    write_txt(tmp_path / "a.txt", docs, "newlines")
    out = tmp_path / "out"
    prepare_corpus([tmp_path / "a.txt"], tok, out, workers=1, progress=False)
    files = ("train.bin", "val.bin", "meta.json")
    stamps = {f: (out / f).stat().st_mtime_ns for f in files}
    capsys.readouterr()

    prepare_corpus([tmp_path / "a.txt"], tok, out, workers=1, progress=False)
    assert "up to date" in capsys.readouterr().out
    assert {f: (out / f).stat().st_mtime_ns for f in files} == stamps
    os.utime(tmp_path / "a.txt", ns=(1, 1))  # touched, same content: still a hit
    prepare_corpus([tmp_path / "a.txt"], tok, out, workers=1, progress=False)
    assert "up to date" in capsys.readouterr().out

    other = make_tokenizer(extra_merges=1)
    meta = prepare_corpus([tmp_path / "a.txt"], other, out, workers=1, progress=False)
    assert "up to date" not in capsys.readouterr().out
    assert meta["tokenizer_fingerprint"] == other.fingerprint != tok.fingerprint

    write_txt(tmp_path / "a.txt", docs + ["one more document"], "newlines")
    meta = prepare_corpus([tmp_path / "a.txt"], other, out, workers=1, progress=False)
    assert "up to date" not in capsys.readouterr().out
    assert sum(s["num_documents"] for s in meta["splits"].values()) == 11
    (out / "val.bin").unlink()  # a missing token file is rebuilt too
    prepare_corpus([tmp_path / "a.txt"], other, out, workers=1, progress=False)
    assert "up to date" not in capsys.readouterr().out and (out / "val.bin").exists()


def test_exception_mid_run_leaves_nothing_that_looks_complete(tmp_path, tok, monkeypatch):
    docs = nasty_docs(random.Random(6), 40)
    write_txt(tmp_path / "a.txt", docs, "newlines")
    out = tmp_path / "out"
    good = prepare_corpus([tmp_path / "a.txt"], tok, out, workers=1, chunk_size=512, progress=False)
    good_train = (out / "train.bin").read_bytes()
    written = []

    def crash_after_three(totals):
        written.append(1)
        if len(written) == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(prepare_module, "_on_chunk_written", crash_after_three)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_corpus([tmp_path / "a.txt"], tok, out, workers=1, chunk_size=512, force=True, progress=False)
    assert not (out / "meta.json").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    with pytest.raises(DataError, match="meta.json not found"):
        MemmapTokens(out, "train", context_length=4)
    monkeypatch.undo()
    again = prepare_corpus([tmp_path / "a.txt"], tok, out, workers=1, chunk_size=512, progress=False)
    assert (out / "train.bin").read_bytes() == good_train
    assert again["splits"] == good["splits"]


def test_killed_process_leaves_no_complete_looking_output(tmp_path, tok):
    docs = nasty_docs(random.Random(7), 40)
    write_txt(tmp_path / "a.txt", docs, "newlines")
    tok.save(tmp_path / "tok")
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        from dist_llm.data import prepare
        from dist_llm.tokenizer import Tokenizer
        def die(totals):
            if totals["bytes"] > 2000:
                os.kill(os.getpid(), signal.SIGKILL)
        prepare._on_chunk_written = die
        prepare.prepare_corpus([{str(tmp_path / "a.txt")!r}], Tokenizer.load({str(tmp_path / "tok")!r}),
                               {str(out)!r}, workers=1, chunk_size=512, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not (out / "meta.json").exists() and not (out / "train.bin").exists()
    assert list(out.glob(".train.bin.tmp"))  # the partial file only ever had a temporary name
    meta = prepare_corpus([tmp_path / "a.txt"], tok, out, workers=1, progress=False)
    assert read_split(out, "train") == expected_ids(tok, {"a.txt": docs}, 0.01)["train"]
    assert meta["splits"]["train"]["num_documents"] + meta["splits"]["val"]["num_documents"] == 40


def test_bad_inputs_have_clear_errors(tmp_path, tok):
    out = tmp_path / "out"
    (tmp_path / "bad.txt").write_bytes(b"fine text\n" * 50 + b"\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad\.txt: invalid UTF-8 at byte offset 500"):
        prepare_corpus([tmp_path / "bad.txt"], tok, out, workers=1, progress=False)
    assert not (out / "meta.json").exists() and not (out / "train.bin").exists()
    meta = prepare_corpus([tmp_path / "bad.txt"], tok, out, workers=1, replace_invalid_utf8=True,
                          val_fraction=0.0, progress=False)
    assert meta["splits"]["train"]["num_documents"] == 1
    assert "\ufffd\ufffd broken" in tok.decode(read_split(out, "train"))

    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: expected a JSON object with a \"text\" field"):
        prepare_corpus([tmp_path / "d.jsonl"], tok, tmp_path / "o2", workers=2, progress=False)

    (tmp_path / "empty.txt").write_text(f"\n{SEP}\n  \n{SEP}", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty corpus: no documents in .*empty\.txt"):
        prepare_corpus([tmp_path / "empty.txt"], tok, tmp_path / "o3", workers=1, progress=False)
    assert not (tmp_path / "o3" / "train.bin").exists()

    no_sep = Tokenizer({i: bytes([i]) for i in range(256)}, [], [])
    with pytest.raises(DataError, match="no special token '<|endoftext|>'"):
        prepare_corpus([tmp_path / "bad.txt"], no_sep, tmp_path / "o4", progress=False)
    with pytest.raises(DataError, match="val_fraction"):
        prepare_corpus([tmp_path / "bad.txt"], tok, tmp_path / "o4", val_fraction=1.5, progress=False)


def test_dtype_follows_vocab_size():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_cli_prepares_and_reports(tmp_path, tok, capsys):
    from dist_llm.data.prepare import main

    write_txt(tmp_path / "a.txt", nasty_docs(random.Random(8), 20), "newlines")
    tok.save(tmp_path / "tok")
    args = ["--input", str(tmp_path / "a.txt"), "--tokenizer", str(tmp_path / "tok"),
            "--out", str(tmp_path / "o"), "--workers", "1", "--val-fraction", "0.1", "--no-progress"]
    assert main(args) == 0
    assert "bytes/token" in capsys.readouterr().out
    ds = MemmapTokens(tmp_path / "o", "train", context_length=16,
                      expected_tokenizer_fingerprint=tok.fingerprint)
    assert len(ds) > 10
    assert main(args) == 0 and "up to date" in capsys.readouterr().out
    assert main(["--input", str(tmp_path / "nope.txt"), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "nope.txt: no such file" in capsys.readouterr().err


def test_one_document_corpus_holds_out_its_last_tokens(tmp_path, tok, capsys):
    """A file without separators (nanoGPT's tinyshakespeare, say) is one document, which whole-document
    hashing puts in one split: val is then the last val_fraction of the tokens, so training can run."""
    doc = " ".join(nasty_docs(random.Random(7), 30))
    (tmp_path / "one.txt").write_text(doc, encoding="utf-8")
    stream = tok.encode(doc) + [tok.token_id(SEP)]
    meta = prepare_corpus([tmp_path / "one.txt"], tok, tmp_path / "out", workers=1, val_fraction=0.1,
                          progress=False)
    num_val = math.ceil(len(stream) * 0.1)
    assert read_split(tmp_path / "out", "train") == stream[:-num_val]
    assert read_split(tmp_path / "out", "val") == stream[-num_val:]
    assert meta["val_split"] == "last tokens"
    assert {s: meta["splits"][s]["num_documents"] for s in ("train", "val")} == {"train": 0, "val": 1}
    out = capsys.readouterr()
    assert "val is the last 0.1 of the tokens" in out.err
    # one document cut by tokens: said so, not "0 train + 1 val documents" next to a 90% train split
    assert (f"1 document, split by tokens, {len(stream) - num_val:,} train + {num_val:,} val tokens"
            in out.out), out.out
    assert "val documents" not in out.out
    assert MemmapTokens(tmp_path / "out", "val", 16, tok.fingerprint).num_tokens == num_val


def test_one_document_hashed_into_val_still_leaves_the_head_for_train(tmp_path, tok):
    name = next(f"doc{i}.txt" for i in range(100) if is_validation_doc(f"doc{i}.txt", 0, 0.5))
    doc = " ".join(nasty_docs(random.Random(8), 20))
    (tmp_path / name).write_text(doc, encoding="utf-8")
    stream = tok.encode(doc) + [tok.token_id(SEP)]
    meta = prepare_corpus([tmp_path / name], tok, tmp_path / "out", workers=1, val_fraction=0.5,
                          progress=False)
    cut = len(stream) - math.ceil(len(stream) * 0.5)
    assert read_split(tmp_path / "out", "train") == stream[:cut]
    assert read_split(tmp_path / "out", "val") == stream[cut:]
    assert meta["val_split"] == "last tokens"


def test_documents_in_both_splits_keep_the_whole_document_rule(tmp_path, tok):
    docs = nasty_docs(random.Random(9), 60)
    write_txt(tmp_path / "a.txt", docs, "newlines")
    meta = prepare_corpus([tmp_path / "a.txt"], tok, tmp_path / "out", workers=1, val_fraction=0.3,
                          progress=False)
    assert meta["val_split"] == "documents" and meta["splits"]["val"]["num_documents"] > 0
    assert read_split(tmp_path / "out", "val") == expected_ids(tok, {"a.txt": docs}, 0.3)["val"]


def test_an_empty_val_split_from_an_older_build_is_rebuilt(tmp_path, tok, capsys):
    (tmp_path / "one.txt").write_text("the cat " * 200, encoding="utf-8")
    out = tmp_path / "out"
    prepare_corpus([tmp_path / "one.txt"], tok, out, workers=1, progress=False)
    # What a build before the last-tokens rule left: every token in train, val empty.
    meta = json.loads((out / "meta.json").read_text())
    (out / "train.bin").write_bytes((out / "train.bin").read_bytes() + (out / "val.bin").read_bytes())
    (out / "val.bin").write_bytes(b"")
    meta["splits"]["train"]["num_tokens"] += meta["splits"]["val"]["num_tokens"]
    meta["splits"]["val"]["num_tokens"] = 0
    (out / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    meta = prepare_corpus([tmp_path / "one.txt"], tok, out, workers=1, progress=False)
    assert "up to date" not in capsys.readouterr().out
    assert meta["splits"]["val"]["num_tokens"] > 0 and (out / "val.bin").stat().st_size > 0
