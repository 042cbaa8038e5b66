"""Tokenizer files: our JSON format (save/load) and GPT-2's vocab.json + merges.txt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_llm.tokenizer import Tokenizer, TokenizerError
from dist_llm.tokenizer.files import FILENAME, bytes_to_unicode, write_gpt2_files


@pytest.fixture
def tok() -> Tokenizer:
    # Tokens that are not valid UTF-8 on their own (a lone continuation byte, half of "é", 0xff...).
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"\xc3", b"\xa9"), (b"\xff", b"\xfe"), (b"\x80", b"\x00"), (b" ", b"t"), (b" t", b"\xc3\xa9")]
    for left, right in merges:
        vocab[len(vocab)] = left + right
    return Tokenizer(vocab, merges, ["<|endoftext|>"])


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path == str(tmp_path / "tok" / FILENAME)
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.vocab == tok.vocab and loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens and loaded.fingerprint == tok.fingerprint
    assert loaded.vocab[257] == b"\xff\xfe" and loaded.vocab[258] == b"\x80\x00"
    text = "\xff tété<|endoftext|>"
    assert loaded.encode(text) == tok.encode(text)
    assert Tokenizer.load(path).fingerprint == tok.fingerprint  # the json path itself works too
    assert [p.name for p in (tmp_path / "tok").iterdir()] == [FILENAME]  # no temp file left behind


def test_file_is_documented_json(tok, tmp_path):
    doc = json.loads(Path(tok.save(tmp_path / "t")).read_text(encoding="utf-8"))
    assert doc["format"] == "dist_llm_tokenizer" and doc["version"] == 1
    assert doc["special_tokens"] == ["<|endoftext|>"]
    assert (
        [261, "<|endoftext|>"] in doc["vocab"]
        and [257, "\xff\xfe"] in doc["vocab"]
        and [" ", "t"] in doc["merges"]
    )
    assert doc["fingerprint"] == tok.fingerprint


def _edit(tmp_path, tok, change) -> str:
    tok.save(tmp_path)
    path = tmp_path / FILENAME
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(format="something_else"), "was not written by dist_llm"),
        (lambda d: d.pop("format"), "was not written by dist_llm"),
        (lambda d: d.update(version=99), "unsupported dist_llm_tokenizer version 99"),
        (lambda d: d.update(merges=d["merges"] + [["q", "z"]]), r"merge #5 .*b'qz' is missing"),
        (lambda d: d["vocab"].pop(65), "lacks 1 single-byte"),
        (lambda d: d.update(fingerprint="0" * 64), "fingerprint mismatch"),
        (lambda d: d["vocab"].append([0, "x"]), "vocab id 0 appears more than once"),
        (lambda d: d["vocab"].append([999, "\u0100"]), "above U\\+00FF"),
        (lambda d: d.update(vocab={"a": 1}), "'vocab' must be a list"),
        (lambda d: d["merges"].append(["a"]), r"merge #5 .* must be \[left, right\]"),
    ],
)
def test_load_rejects_bad_files(tok, tmp_path, change, match):
    path = _edit(tmp_path, tok, change)
    with pytest.raises(TokenizerError, match=match) as info:
        Tokenizer.load(tmp_path)
    assert path in str(info.value)  # the message names the file


def test_load_rejects_foreign_json_and_garbage(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / FILENAME).write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    with pytest.raises(TokenizerError, match="was not written by dist_llm"):
        Tokenizer.load(tmp_path / "hf")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / FILENAME).write_text("{not json")
    with pytest.raises(TokenizerError, match="junk.*not a dist_llm_tokenizer JSON file"):
        Tokenizer.load(tmp_path / "junk")
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing")


def test_save_into_a_file_path_fails(tok, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TokenizerError, match="not a directory"):
        tok.save(tmp_path / "afile")


def test_bytes_to_unicode_is_gpt2s_map():
    m = bytes_to_unicode()
    assert len(set(m.values())) == 256
    assert m[ord("a")] == "a" and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ"
    assert all(not ch.isspace() for ch in m.values())


def test_gpt2_files_round_trip(tok, tmp_path):
    vocab_path, merges_path = write_gpt2_files(tok.vocab, tok.merges, tmp_path)
    again = Tokenizer.from_files(vocab_path, merges_path, ["<|endoftext|>"])
    assert again.vocab == tok.vocab and again.merges == tok.merges
    assert again.fingerprint == tok.fingerprint
    assert merges_path.endswith("merges.txt") and "Ġ t" in Path(merges_path).read_text(encoding="utf-8")


def test_from_files_reads_handwritten_gpt2_format(tmp_path):
    m = bytes_to_unicode()
    vocab = {m[b]: b for b in range(256)}
    vocab.update({"Ġt": 256, "he": 257, "Ġthe": 258, "<|endoftext|>": 259})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n", encoding="utf-8")
    tok = Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt", ["<|endoftext|>"])
    assert tok.merges == [(b" ", b"t"), (b"h", b"e"), (b" t", b"he")]
    assert tok.encode(" the the<|endoftext|>") == [258, 258, 259]
    assert tok.decode([258, 259]) == " the<|endoftext|>"


@pytest.mark.parametrize(
    "vocab_text, merges_text, match",
    [
        ("[1, 2]", "", "expected a JSON object"),
        ('{"a": "x"}', "", "id of token 'a' must be an integer"),
        ("{bad", "", "not a GPT-2 vocab.json"),
        ('{"a\\u3042": 1}', "", "outside GPT-2's byte map"),
        (None, "a b c\n", r"merges.txt:1: expected 'left right'"),
    ],
)
def test_from_files_bad_input(tmp_path, vocab_text, merges_text, match):
    m = bytes_to_unicode()
    good_vocab = json.dumps({m[b]: b for b in range(256)})
    (tmp_path / "vocab.json").write_text(
        vocab_text if vocab_text is not None else good_vocab, encoding="utf-8"
    )
    (tmp_path / "merges.txt").write_text(merges_text, encoding="utf-8")
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_from_files_missing(tmp_path):
    with pytest.raises(TokenizerError, match="vocab.json.*does not exist"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
