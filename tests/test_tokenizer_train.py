"""BPE training: hand-checked merges, tie-breaking, special tokens, chunking, workers, bad input."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import regex

from dist_llm.tokenizer import TokenizerError, corpus, train_bpe
from dist_llm.tokenizer.bpe_merge import reverse_order_key
from dist_llm.tokenizer.corpus import count_corpus, iter_chunk_bounds
from dist_llm.tokenizer.pretokenize import GPT2_PATTERN

EOT = "<|endoftext|>"


def reference_train(text: str, vocab_size: int, special_tokens: list[str]) -> list[tuple[bytes, bytes]]:
    """Brute force BPE straight from the definition: recount every pair after every merge."""
    if special_tokens:
        alternation = "|".join(regex.escape(t) for t in sorted(special_tokens, key=len, reverse=True))
        documents = regex.split(alternation, text)
    else:
        documents = [text]
    words: Counter[tuple[bytes, ...]] = Counter()
    for doc in documents:
        for piece in regex.findall(GPT2_PATTERN, doc):
            words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    merges = []
    while len(merges) < vocab_size - 256 - len(special_tokens):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties: lexicographically greatest pair
        merges.append(best)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def write(tmp_path: Path, text: str, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_hand_checked_merges(tmp_path):
    # Each word is its own document (special tokens separate them), so the pre-tokens are exactly
    # low x5, lower x2, widest x3, newest x6 (no leading spaces).
    words = ["low"] * 5 + ["lower"] * 2 + ["widest"] * 3 + ["newest"] * 6
    path = write(tmp_path, EOT.join(words))
    vocab, merges = train_bpe(path, 256 + 1 + 12, [EOT])
    # Pair counts at the start: lo 7, ow 7, we 8, er 2, wi 3, id 3, de 3, es 9, st 9, ne 6, ew 6.
    #  1. es = st = 9: tie -> the greater pair (s, t)                   newest: n e w e st
    #  2. (e, st) = 9                                                    newest: n e w est
    #  3. lo = ow = 7 (we fell to 2): tie -> (o, w)
    #  4. (l, ow) = 7
    #  5. ne = ew = (w, est) = 6: the greatest first part is "w" -> (w, est)
    #  6. ne = (e, west) = 6: "n" > "e" -> (n, e)
    #  7. (ne, west) = 6
    #  8. wi = id = (d, est) = 3 -> (w, i);  9. (wi, d) = (d, est) = 3: "wi" > "d" -> (wi, d)
    # 10. (wid, est);  11. (low, e) = (e, r) = 2 -> (low, e);  12. (lowe, r)
    expected = [
        (b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e"),
        (b"ne", b"west"), (b"w", b"i"), (b"wi", b"d"), (b"wid", b"est"), (b"low", b"e"), (b"lowe", b"r"),
    ]  # fmt: skip
    assert merges == expected
    assert vocab[256] == EOT.encode()
    assert [vocab[257 + i] for i in range(12)] == [a + b for a, b in expected]
    assert sorted(vocab) == list(range(256 + 1 + 12))


def test_reverse_order_key_sorts_bytes_backwards():
    rng = random.Random(0)
    tokens = {bytes(rng.choice([0, 1, 97, 98, 255]) for _ in range(rng.randint(1, 4))) for _ in range(400)}
    tokens |= {b"a", b"ab", b"a\x00", b"\xff", b"\xff\xff", b"\x00"}  # prefixes and extreme bytes
    by_key = sorted(tokens, key=reverse_order_key)
    assert by_key == sorted(tokens, reverse=True)


@pytest.mark.parametrize(
    "text, first_merge",
    [
        ("ab ba", (b"b", b"a")),  # equal counts: "b" > "a"
        ("ab<|endoftext|>abc<|endoftext|>bc", (b"b", b"c")),  # ab = bc = 2: (b, c) > (a, b)
        ("\xe9\xe9 \xe9\xe9 zz zz", (b"\xc3", b"\xa9")),  # high bytes compare greater than "z"
        ("aab aab", (b"a", b"b")),  # aa = ab = 2: (a, b) > (a, a)
    ],
)
def test_tie_break_prefers_greatest_pair(tmp_path, text, first_merge):
    path = write(tmp_path, text)
    _, merges = train_bpe(path, 256 + 1 + 1, [EOT])
    assert merges[0] == first_merge
    assert merges == reference_train(text, 256 + 1 + 1, [EOT])


def test_prefix_tie_break_against_reference(tmp_path):
    # Pairs whose left parts are a token and its own prefix ("a" vs "aa"): bytes order, not length.
    text = "aa aab aab aaab aaab aaab ab ab"
    path = write(tmp_path, text)
    _, merges = train_bpe(path, 256 + 8, [])
    assert merges == reference_train(text, 256 + 8, [])


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_reference(tmp_path, seed):
    rng = random.Random(seed)
    alphabet = ["a", "b", "ab", "aa", " ", "  ", "\n", "é", "x", "1", "'s", "!", "<|e|>", "<|e|><|e|>"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(20, 300)))
    specials = ["<|e|>", "<|e|><|e|>"][: rng.randint(0, 2)]
    vocab_size = 256 + len(specials) + rng.randint(1, 60)
    path = write(tmp_path, text)
    _, merges = train_bpe(path, vocab_size, specials)
    assert merges == reference_train(text, vocab_size, specials)


def test_special_tokens_are_never_merged_and_separate_documents(tmp_path):
    specials = ["<|a|>", "<|a|><|b|>"]
    text = ("xy<|a|>yx<|a|><|b|>xy" + "<|a|>" * 3) * 20
    path = write(tmp_path, text)
    vocab, merges = train_bpe(path, 300, specials)
    documents = regex.split(r"<\|a\|><\|b\|>|<\|a\|>", text)
    for left, right in merges:
        assert b"<" not in left + right and b"|" not in left + right
        assert any((left + right).decode() in doc for doc in documents)  # no token spans a boundary
    assert vocab[256] == b"<|a|>" and vocab[257] == b"<|a|><|b|>"
    assert list(vocab.values()).count(b"<|a|>") == 1
    assert merges == reference_train(text, 300, specials)


def test_no_merge_across_document_boundary(tmp_path):
    path = write(tmp_path, f"ab{EOT}cd{EOT}" * 50)
    _, merges = train_bpe(path, 256 + 1 + 10, [EOT])
    assert merges == [(b"c", b"d"), (b"a", b"b")]  # the pairs run out: "bc" and "da" never merge


def _corpus(rng: random.Random, n_docs: int, specials: list[str]) -> str:
    words = [
        "the",
        " cat",
        " sat",
        "\n",
        "\n\n",
        " on",
        " mat",
        "!",
        " é",
        "  ",
        "'s",
        "42",
        "X\nY",
        "\r\n",
        "'\r",
    ]
    docs = ["".join(rng.choice(words) for _ in range(rng.randint(5, 60))) for _ in range(n_docs)]
    out = []
    for doc in docs:
        out.append(doc)
        out.append(rng.choice(specials) if specials else "")
    return "".join(out)


@pytest.mark.parametrize("specials", [[], [EOT], ["<|a|>", "<|a|><|a|>", "a|>"]])
def test_chunked_counts_equal_whole_text_counts(tmp_path, specials):
    rng = random.Random(len(specials))
    text = _corpus(rng, 80, specials)
    path = write(tmp_path, text)
    whole = count_corpus([path], specials, num_workers=1, chunk_bytes=1 << 30)
    bounds = list(iter_chunk_bounds(path, specials, chunk_bytes=64))
    assert len(bounds) > 10
    data = path.read_bytes()
    for start, _ in bounds[1:]:
        # A chunk starts at a special token, or at a line break after a printable ASCII character.
        at_line_break = data[start : start + 1] in (b"\n", b"\r") and 0x21 <= data[start - 1] <= 0x7E
        assert any(data.startswith(t.encode(), start) for t in specials) or at_line_break
    assert bounds[0][0] == 0 and bounds[-1][1] == len(data)
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))
    assert whole == count_corpus([path], specials, num_workers=1, chunk_bytes=64)


@pytest.mark.parametrize("seed", range(5))
def test_line_break_cuts_never_change_counts(tmp_path, seed):
    # No special tokens: every cut is a line-break cut. Tiny chunks try nearly every position.
    rng = random.Random(seed)
    pieces = ["a", "b", " ", "\n", "\r", "\r\n", "'", "s", "ll", "1", "!", "é", "\t", "\u00a0", "日", "\n\n"]
    for _ in range(40):
        path = write(tmp_path, "".join(rng.choice(pieces) for _ in range(rng.randint(1, 200))))
        whole = count_corpus([path], [], chunk_bytes=1 << 30)
        assert count_corpus([path], [], chunk_bytes=1) == count_corpus([path], [], chunk_bytes=5) == whole


def test_chunk_boundary_does_not_split_overlapping_special(tmp_path):
    # "<|a|><|a|>" must stay one token even when a chunk boundary could fall at its inner "<|a|>".
    specials = ["<|a|>", "<|a|><|a|>"]
    text = "x" * 60 + "<|a|><|a|>" + "y" * 60 + "<|a|>" + "z"
    path = write(tmp_path, text)
    for chunk in range(1, 80, 3):
        for start, _ in list(iter_chunk_bounds(path, specials, chunk_bytes=chunk))[1:]:
            assert start not in (65,)  # the inner "<|a|>" of the long token starts at byte 65
    whole = count_corpus([path], specials, chunk_bytes=1 << 20)
    assert count_corpus([path], specials, chunk_bytes=8) == whole


@pytest.fixture
def small_inputs_use_processes(monkeypatch):
    monkeypatch.setattr(corpus, "MIN_BYTES_PER_PROCESS", 1)


@pytest.mark.usefixtures("small_inputs_use_processes")
def test_workers_give_identical_merges(tmp_path):
    rng = random.Random(7)
    path = write(tmp_path, _corpus(rng, 400, [EOT]))
    one = train_bpe(path, 400, [EOT], num_workers=1, chunk_bytes=2048)
    two = train_bpe(path, 400, [EOT], num_workers=2, chunk_bytes=2048)
    three = train_bpe(path, 400, [EOT], num_workers=3, chunk_bytes=4096)
    whole = train_bpe(path, 400, [EOT], num_workers=1, chunk_bytes=1 << 30)
    assert one == two == three == whole
    assert len(one[1]) > 50


@pytest.mark.usefixtures("small_inputs_use_processes")
def test_spawn_start_method_matches(tmp_path):
    rng = random.Random(8)
    path = write(tmp_path, _corpus(rng, 100, [EOT]))
    spawned = train_bpe(path, 300, [EOT], num_workers=2, chunk_bytes=1024, start_method="spawn")
    assert spawned == train_bpe(path, 300, [EOT], num_workers=1)


def test_several_input_files_are_separate_documents(tmp_path):
    a, b = write(tmp_path, "ab ab ab", "a.txt"), write(tmp_path, "cd cd", "b.txt")
    vocab, merges = train_bpe([a, b], 300, [])
    assert merges == reference_train("ab ab ab" + EOT + "cd cd", 300, [EOT])


def test_a_byte_order_mark_is_not_counted(tmp_path):
    """A BOM at a file's start is not text: it gets no merges (data preparation drops it too)."""
    with_bom = write(tmp_path, "\ufeffab ab ab", "bom.txt")
    assert train_bpe(with_bom, 270, [EOT]) == train_bpe(write(tmp_path, "ab ab ab", "plain.txt"), 270, [EOT])


def test_progress_bars_can_be_shown(tmp_path, capsys):
    train_bpe(write(tmp_path, "ab ab ab cd"), 260, [], progress=True)
    err = capsys.readouterr().err
    assert "pre-tokenize" in err and "merge" in err


def test_training_stops_when_pairs_run_out(tmp_path):
    vocab, merges = train_bpe(write(tmp_path, "abc"), 1000, [])
    assert merges == [(b"b", b"c"), (b"a", b"bc")]
    assert len(vocab) == 258


# ----------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="nope.txt.*does not exist"):
        train_bpe(tmp_path / "nope.txt", 300, [])


def test_empty_file(tmp_path):
    with pytest.raises(TokenizerError, match="empty.txt.*empty"):
        train_bpe(write(tmp_path, "", "empty.txt"), 300, [])


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(TokenizerError, match="not a regular file"):
        train_bpe(tmp_path, 300, [])


@pytest.mark.usefixtures("small_inputs_use_processes")
@pytest.mark.parametrize("workers", [1, 2])
def test_invalid_utf8_names_byte_offset(tmp_path, workers):
    path = tmp_path / "bad.txt"
    path.write_bytes(("hello world\n" * 500).encode() + b"ab\xffcd" + b"\nmore text\n" * 10)
    with pytest.raises(TokenizerError, match=r"bad.txt.*not valid UTF-8 at byte offset 6002"):
        train_bpe(path, 300, [], num_workers=workers, chunk_bytes=1000)


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(TokenizerError, match=r"vocab_size 256 is too small.*257"):
        train_bpe(write(tmp_path, "abc"), 256, [EOT])


@pytest.mark.parametrize(
    "specials, match",
    [([EOT, EOT], "more than once"), ([""], "empty"), ([EOT, 5], "not a string"), (EOT, "single string")],
)
def test_bad_special_tokens(tmp_path, specials, match):
    with pytest.raises(TokenizerError, match=match):
        train_bpe(write(tmp_path, "abc"), 300, specials)


@pytest.mark.parametrize(
    "kwargs, match", [({"num_workers": 0}, "num_workers"), ({"vocab_size": "300"}, "integer")]
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"vocab_size": 300, **kwargs}
    with pytest.raises(TokenizerError, match=match):
        train_bpe(write(tmp_path, "abc"), special_tokens=[], **args)
