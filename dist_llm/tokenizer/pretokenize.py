"""Pre-tokenization: special tokens are split out first, the rest is cut by the GPT-2 regex.

Both training and encoding go through these helpers, so they split text in exactly the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import regex

from .errors import TokenizerError

# The GPT-2 pre-tokenizer pattern: contractions, letters, numbers, other symbols (each optionally
# led by one space), and whitespace runs; `\s+(?!\S)` leaves the last space of a run to the word after it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_PATTERN)

# The same pattern for pure-ASCII text, spelled with ASCII classes so the stdlib `re` engine can run
# it (about 1.6x faster than `regex` here). On ASCII, \p{L} is [A-Za-z], \p{N} is [0-9], and the
# `regex` module's \s is exactly these six characters (unlike `re`'s \s, which adds \x1c-\x1f).
# The word branch comes first because it matches most often; it cannot match where the contraction
# branch can (one starts with a space or letter, the other with '), so the order changes no result.
_WS = r"\t\n\x0b\x0c\r "
ASCII_REGEX = re.compile(
    rf""" ?[A-Za-z]+|'(?:[sdmt]|ll|ve|re)| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
)


def pretokenize(text: str) -> list[str]:
    """The GPT-2 pre-tokens of `text` (no special-token handling); str.isascii() is O(1)."""
    return ASCII_REGEX.findall(text) if text.isascii() else GPT2_REGEX.findall(text)


def validate_special_tokens(special_tokens: Iterable[str] | None) -> list[str]:
    """Returns the special tokens as a list, rejecting non-strings, empty strings and duplicates."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, str):
        raise TokenizerError(
            f"special_tokens must be a list of strings, got the single string {special_tokens!r}"
        )
    tokens = list(special_tokens)
    seen: set[str] = set()
    for token in tokens:
        if not isinstance(token, str):
            raise TokenizerError(f"special token {token!r} is not a string (got {type(token).__name__})")
        if token == "":
            raise TokenizerError("special tokens must not be empty strings")
        if token in seen:
            raise TokenizerError(f"special token {token!r} is given more than once")
        seen.add(token)
    return tokens


def special_token_regex(special_tokens: Sequence[str]) -> regex.Pattern | None:
    """A regex matching any special token; at one position the longest one wins.

    The alternation tries longer tokens first, so for overlapping tokens such as "<|a|>" and
    "<|a|><|a|>" the longer one is taken where both match. None when there are no special tokens.
    """
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=lambda t: (-len(t), t))
    return regex.compile("|".join(regex.escape(t) for t in ordered))


def count_pretokens(
    text: str, special_regex: regex.Pattern | None, counts: Counter[str] | None = None
) -> Counter[str]:
    """Counts the GPT-2 pre-tokens of `text` (into `counts` if given), special tokens removed.

    Splitting on special tokens first means no pre-token (and so no merge) spans two documents.
    """
    counts = Counter() if counts is None else counts
    segments = special_regex.split(text) if special_regex is not None else (text,)
    for segment in segments:
        if segment:
            counts.update(pretokenize(segment))
    return counts
