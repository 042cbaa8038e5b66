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


# Mixed text is cut into ASCII stretches (for ASCII_REGEX) and stretches around non-ASCII characters
# (for GPT2_REGEX), only between an ASCII non-space character X and a whitespace character W:
# - no GPT-2 pre-token runs from a non-space character into whitespace, so one ends at X;
# - every pre-token before it is decided by the text up to X and the one character after it (a "'"
#   right before X = "l" reads one more to rule out "'ll"; a lone "'" at X reads one more for "'s"),
#   and W rules each of these out exactly as the end of the text does (the same holds for a
#   whitespace run before X: its look-ahead reads at most X);
# - the pattern has no look-behind, so matching from W on gives what it gives in the whole text.
# X is ASCII so that it is surely not whitespace (U+00A0 and U+3000 are); the `regex` module's \s
# on ASCII is exactly the six characters of _WS.
_NOT_WS = r"\x00-\x08\x0e-\x1f\x21-\x7f"
_CUT = re.compile(rf"[{_NOT_WS}](?=[{_WS}])")  # a match ends at a cut
# Listing the non-ASCII range (rather than negating ASCII) makes the scan about 3x faster.
_NON_ASCII = re.compile("[\x80-\U0010ffff]")
# Finding the next non-ASCII character: whole blocks are skipped with str.isascii() on a slice
# (a memcpy and a max-character scan in C), several times faster than a regex scan.
_BLOCK = 512
# Non-ASCII characters less than this far apart share one full-pattern stretch: a stretch costs a
# few Python calls, which buys more than the fast path would save on so little text.
_MERGE_GAP = 64
_WS_CHARS = frozenset(_WS.encode().decode("unicode_escape"))


def _next_non_ascii(text: str, pos: int) -> int:
    """The index of the first non-ASCII character at or after pos, or -1."""
    n = len(text)
    while pos < n:
        end = pos + _BLOCK
        if not text[pos:end].isascii():
            return _NON_ASCII.search(text, pos, end).start()
        pos = end
    return -1


def _cut_before(text: str, lo: int, i: int) -> int:
    """The last cut in text[lo:i] (the start of the whitespace run before the word holding i), else lo.

    Only spaces and line breaks are looked for: a cut further left is as exact, just slower.
    """
    q = max(text.rfind(" ", lo, i), text.rfind("\n", lo, i))
    while q > lo and text[q - 1] in _WS_CHARS:
        q -= 1
    return max(q, lo)


def pretokenize(text: str) -> list[str]:
    """The GPT-2 pre-tokens of `text` (no special-token handling), as GPT2_REGEX.findall gives them.

    ASCII stretches take the fast `re` path (see the cut rule above); str.isascii() is O(1).
    """
    if text.isascii():
        return ASCII_REGEX.findall(text)
    pieces: list[str] = []
    pos, n = 0, len(text)
    i = _next_non_ascii(text, 0)
    while i >= 0:
        start = _cut_before(text, pos, i)
        while True:  # extend the stretch over non-ASCII characters that follow closely
            cut = _CUT.search(text, i + 1)
            end = cut.end() if cut else n
            i = _next_non_ascii(text, end)
            if i < 0 or i - end > _MERGE_GAP:
                break
        # ASCII stretches are sliced out: a slice of ASCII characters is a 1-byte string again, which
        # `re` matches and cuts pre-tokens from faster than the 2- or 4-byte string it came from.
        if start > pos:
            pieces += ASCII_REGEX.findall(text[pos:start])
        pieces += GPT2_REGEX.findall(text, start, end)
        pos = end
    if pos < n:
        pieces += ASCII_REGEX.findall(text[pos:])
    return pieces


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
