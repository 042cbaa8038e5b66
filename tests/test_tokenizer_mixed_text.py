"""Mostly-ASCII text with some non-ASCII: the split fast path gives exactly the plain GPT-2 pattern's
pre-tokens and ids, in encode, encode_iterable (any chunk size) and training's pre-token counts.

pretokenize cuts mixed text into ASCII stretches and stretches around non-ASCII characters; the
fragments below put non-ASCII characters wherever such a cut could go wrong: next to apostrophes
("’s", "'ll" after an accented letter), numbers, whitespace runs (ASCII and not: U+00A0, U+3000,
U+0085), combining marks, CJK and emoji. Small block and merge-gap settings move the scan's block
edges and the merging of nearby stretches onto every position of short texts.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_tokenizer_encode import tokenizer_trained_on

from dist_llm.tokenizer import Tokenizer
from dist_llm.tokenizer import pretokenize as pretokenize_module
from dist_llm.tokenizer.corpus import count_corpus
from dist_llm.tokenizer.pretokenize import GPT2_REGEX, count_pretokens, pretokenize

FRAGMENTS = [
    "’s", "'ll", "é'll", "café's", "’", "'", "l", "s", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t",
    " \n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", " \xa0", "\u3000", "e\u0301", "\u0301", "12", " 345",
    "３", "½", "日本語", " 日本", "🙂", " 🙂", "—", " — ", "naïve", " word", "x", ".", "!?", "'ve", "'re",
    "’ll", "Ω", " Привет", ",", "’S",
]  # fmt: skip
mixed_text = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(alphabet=st.characters(max_codepoint=127), max_size=8),
        st.text(max_size=3),
    ),
    max_size=25,
).map("".join)
# (block, merge gap): the defaults, and tiny ones that put block edges and stretch merges everywhere.
SCAN_SETTINGS = [(None, None), (1, 0), (2, 1), (3, 0), (7, 3)]


# The `scan` fixture only sets constants that every generated input shares.
SCAN_OK = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=SCAN_SETTINGS, ids=lambda s: f"block{s[0]}-gap{s[1]}")
def scan(request, monkeypatch):
    block, gap = request.param
    if block is not None:
        monkeypatch.setattr(pretokenize_module, "_BLOCK", block)
        monkeypatch.setattr(pretokenize_module, "_MERGE_GAP", gap)


@pytest.fixture(scope="module")
def mixed_tok(tmp_path_factory) -> Tokenizer:
    """Trained on the fragments themselves, so "’s", "é'll", " 日本" and the like have merges of their
    own, and a pre-token cut in the wrong place shows in the ids."""
    return tokenizer_trained_on(tmp_path_factory.mktemp("mixed"), FRAGMENTS, ["<|endoftext|>"], docs=80,
                                doc_words=60, merges=150)  # fmt: skip


def plain_ids(tok: Tokenizer, text: str) -> list[int]:
    """The reference: the plain GPT-2 regex over the whole text, each pre-token through BPE alone."""
    return [i for piece in GPT2_REGEX.findall(text) for i in tok._bpe_bytes(piece.encode("utf-8"))]


def long_mix(rng: random.Random, size: int) -> str:
    """Mostly ASCII prose with a fragment every few words: crosses the default block size often."""
    words = ["the", " cat", " sat", ".", "\n", "  ", " on", " 42", "'s", " mat", ",", "\t"]
    out = []
    while sum(map(len, out)) < size:
        out.append(rng.choice(FRAGMENTS) if rng.random() < 0.15 else rng.choice(words))
    return "".join(out)


@settings(max_examples=300, **SCAN_OK)
@given(mixed_text)
@example("it’s we'll café'll x 'll é'll’s 12½ 日本語'll 🙂's")
@example("a \xa0 b\u3000 c\x85 d  \xa0\n e\u0301'll \u0301 ")
@example("'l\xa0l 'lé’ll ’'ll")
def test_pretokens_equal_plain_pattern(scan, text):
    assert pretokenize(text) == GPT2_REGEX.findall(text)


@settings(max_examples=100, **SCAN_OK)
@given(st.integers(0, 2**32 - 1))
def test_pretokens_equal_plain_pattern_on_long_text(scan, seed):
    text = long_mix(random.Random(seed), 3000)
    assert pretokenize(text) == GPT2_REGEX.findall(text)


@settings(max_examples=150, **SCAN_OK)
@given(mixed_text)
def test_encode_equals_plain_pattern_ids(mixed_tok, scan, text):
    ids = mixed_tok.encode(text)
    assert ids == plain_ids(mixed_tok, text)
    assert mixed_tok.decode(ids) == text


@settings(max_examples=60, **SCAN_OK)
@given(mixed_text)
def test_encode_iterable_every_chunk_size(mixed_tok, scan, text):
    expected = plain_ids(mixed_tok, text)
    for size in range(1, len(text) + 2):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(mixed_tok.encode_iterable(chunks)) == expected, size


@settings(max_examples=150, **SCAN_OK)
@given(mixed_text)
def test_training_counts_equal_plain_pattern(scan, text):
    assert count_pretokens(text, None) == Counter(GPT2_REGEX.findall(text))


@pytest.mark.parametrize("seed", range(3))
def test_corpus_counts_every_chunk_size(tmp_path, seed):
    """Training reads files in chunks cut at line breaks; counts equal the plain pattern's at any size."""
    text = long_mix(random.Random(seed), 600)
    path = tmp_path / "mixed.txt"
    path.write_bytes(text.encode("utf-8"))
    expected = Counter(GPT2_REGEX.findall(text))
    for chunk_bytes in (1, 2, 3, 5, 8, 13, 64, 1 << 20):
        assert count_corpus([path], [], chunk_bytes=chunk_bytes) == expected, chunk_bytes


def test_web_like_text_takes_the_fast_path_mostly(monkeypatch):
    """Non-ASCII in one line of twenty: the full pattern sees only the stretches around it."""
    lines = [long_mix(random.Random(i), 60).replace("\n", " ") + "\n" for i in range(200)]
    text = "".join(line.replace("'", "’") if i % 20 == 0 else line.encode("ascii", "ignore").decode()
                   for i, line in enumerate(lines))  # fmt: skip
    seen = []
    real = pretokenize_module.GPT2_REGEX

    class Spy:
        def findall(self, s, pos=0, endpos=None):
            seen.append(len(s) if endpos is None else endpos - pos)
            return real.findall(s, pos, len(s) if endpos is None else endpos)

    monkeypatch.setattr(pretokenize_module, "GPT2_REGEX", Spy())
    assert pretokenize(text) == real.findall(text)
    assert 0 < sum(seen) < len(text) / 5
