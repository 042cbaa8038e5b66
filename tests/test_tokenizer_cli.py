"""The tokenizer CLI end to end, in subprocesses: train, then encode and decode through stdin."""

from __future__ import annotations

import subprocess
import sys

from dist_llm.tokenizer import Tokenizer, train_bpe


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dist_llm.tokenizer", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=120)


def test_train_encode_decode(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "<|endoftext|>".join(["the cat sat on the mat"] * 30 + ["naïve café"] * 5), encoding="utf-8"
    )
    out = tmp_path / "tok"
    trained = run("train", "--input", str(corpus), "--vocab-size", "270", "--special-token", "<|endoftext|>",
                  "--out", str(out), "--workers", "1")  # fmt: skip
    assert trained.returncode == 0, trained.stderr.decode()
    assert b"trained 270 tokens" in trained.stdout
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 270 and tok.special_tokens == ["<|endoftext|>"]

    text = "the cat<|endoftext|>naïve"
    encoded = run("encode", "--tokenizer", str(out), stdin=text.encode())
    assert encoded.returncode == 0, encoded.stderr.decode()
    ids = [int(x) for x in encoded.stdout.split()]
    assert ids == tok.encode(text)
    decoded = run("decode", "--tokenizer", str(out), stdin=encoded.stdout)
    assert decoded.stdout.decode() == text


def test_errors_are_one_clear_line(tmp_path):
    missing = run(
        "train", "--input", str(tmp_path / "nope.txt"), "--vocab-size", "300", "--out", str(tmp_path)
    )
    assert missing.returncode == 2
    assert missing.stderr.decode().strip() == f"error: input file '{tmp_path / 'nope.txt'}' does not exist"

    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(tmp_path / "tok")
    bad_utf8 = run("encode", "--tokenizer", str(tmp_path / "tok"), stdin=b"abc\xffdef")
    assert bad_utf8.returncode == 2
    assert "not valid UTF-8 at byte offset 3" in bad_utf8.stderr.decode()
    assert "Traceback" not in bad_utf8.stderr.decode()


def test_encode_contraction_equals_tokenizer_encode(tmp_path):
    # The user report: `echo "As you'll have her." | ... encode` split "'ll" into "'" + "ll" when
    # the tokenizer had "<|endoftext|>" (streaming held back its last 12 characters, cutting "'l|l").
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "<|endoftext|>".join(["As you'll have her. We're here; they've gone."] * 20), encoding="utf-8"
    )
    tok = Tokenizer(*train_bpe(corpus, 300, ["<|endoftext|>"]), ["<|endoftext|>"])
    tok.save(tmp_path / "tok")
    text = "As you'll have her.\n"
    assert tok.token_id("'ll") in tok.encode(text)  # so a wrong split shows in the ids
    encoded = run("encode", "--tokenizer", str(tmp_path / "tok"), stdin=text.encode())
    assert encoded.returncode == 0, encoded.stderr.decode()
    assert [int(x) for x in encoded.stdout.split()] == tok.encode(text)
