"""Tokenizer files: our JSON format (save/load) and GPT-2's vocab.json + merges.txt (read/write).

`dist_llm_tokenizer.json` (format version 1):

    {
      "format": "dist_llm_tokenizer",
      "version": 1,
      "special_tokens": ["<|endoftext|>"],
      "vocab": [[0, "\\u0000"], ..., [256, "<|endoftext|>"], [257, " t"], ...],
      "merges": [[" ", "t"], ...],
      "fingerprint": "<sha256 hex of vocab + merges + special tokens>"
    }

Token bytes are stored as strings whose code points 0..255 are the bytes themselves (latin-1), so
ASCII tokens stay readable and any byte sequence, valid UTF-8 or not, round-trips exactly. Loading
checks the format name and version, every field's type, that vocab and merges fit together, and
the fingerprint.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from dist_llm.utils.atomic_io import atomic_write

from .errors import TokenizerError

FILENAME = "dist_llm_tokenizer.json"


class TokenizerFile(NamedTuple):
    path: Path
    vocab: dict[int, bytes]
    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str]
    fingerprint: str  # as recorded in the file
FORMAT = "dist_llm_tokenizer"
VERSION = 1


def _to_str(token: bytes) -> str:
    return token.decode("latin-1")


def atomic_write_text(path: Path, text: str) -> None:
    """Never a half-written tokenizer file: see dist_llm.utils.atomic_io."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


Merges = list[tuple[bytes, bytes]]


def write_tokenizer_file(directory: str | os.PathLike, vocab: dict[int, bytes], merges: Merges,
                         special_tokens: list[str], fingerprint: str) -> str:
    """Write `directory/dist_llm_tokenizer.json` (atomically); returns its path. Plain data in, so this
    module knows nothing of the Tokenizer class (which calls it from save())."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TokenizerError(f"cannot save the tokenizer into {str(directory)!r}: it is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "special_tokens": special_tokens,
        "vocab": [[i, _to_str(vocab[i])] for i in sorted(vocab)],
        "merges": [[_to_str(left), _to_str(right)] for left, right in merges],
        "fingerprint": fingerprint,
    }
    path = directory / FILENAME
    # One entry per line: diffable and greppable, still plain JSON.
    body = ",\n".join(
        f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items() if k not in ("vocab", "merges")
    )
    vocab = ",\n    ".join(json.dumps(entry) for entry in doc["vocab"])
    merges = ",\n    ".join(json.dumps(entry) for entry in doc["merges"])
    text = "{\n" + body + f',\n  "vocab": [\n    {vocab}\n  ],\n  "merges": [\n    {merges}\n  ]\n}}\n'
    atomic_write_text(path, text)
    return str(path)


def _from_str(value: Any, where: str, path: Path) -> bytes:
    if not isinstance(value, str) or not value:
        raise TokenizerError(f"{path}: {where} must be a non-empty string, got {value!r}")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise TokenizerError(
            f"{path}: {where} {value!r} has a character above U+00FF; token bytes are stored as latin-1"
        ) from None


def read_tokenizer_file(path: str | os.PathLike) -> TokenizerFile:
    """Read and check a file written by write_tokenizer_file (or its directory). Tokenizer.load builds
    the tokenizer from it and checks the fingerprint."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer file {str(path)!r} does not exist (expected a directory holding {FILENAME})"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not a {FORMAT} JSON file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise TokenizerError(
            f'{path}: was not written by dist_llm (expected "format": {FORMAT!r}, found {found!r})'
        )
    if doc.get("version") != VERSION:
        raise TokenizerError(
            f"{path}: unsupported {FORMAT} version {doc.get('version')!r} (this code reads {VERSION})"
        )
    for key, kind in (("special_tokens", list), ("vocab", list), ("merges", list), ("fingerprint", str)):
        if not isinstance(doc.get(key), kind):
            raise TokenizerError(f"{path}: key {key!r} must be a {kind.__name__}, got {doc.get(key)!r:.80}")
    vocab: dict[int, bytes] = {}
    for entry in doc["vocab"]:
        if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int):
            raise TokenizerError(f"{path}: vocab entry {entry!r:.80} must be [id, token]")
        if entry[0] in vocab:
            raise TokenizerError(f"{path}: vocab id {entry[0]} appears more than once")
        vocab[entry[0]] = _from_str(entry[1], f"vocab token of id {entry[0]}", path)
    merges = []
    for n, entry in enumerate(doc["merges"]):
        if not (isinstance(entry, list) and len(entry) == 2):
            raise TokenizerError(f"{path}: merge #{n} {entry!r:.80} must be [left, right]")
        merges.append(
            (_from_str(entry[0], f"merge #{n} left", path), _from_str(entry[1], f"merge #{n} right", path))
        )
    return TokenizerFile(path, vocab, merges, doc["special_tokens"], doc["fingerprint"])


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used in vocab.json and merges.txt.

    Printable latin-1 bytes map to themselves; the other 68 (control characters, space, ...) map to
    the code points 256, 257, ... in byte order, so no token string contains whitespace.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _gpt2_token_bytes(token: str, where: str, decoder: dict[str, int]) -> bytes:
    try:
        return bytes(decoder[ch] for ch in token)
    except KeyError as e:
        raise TokenizerError(
            f"{where}: token {token!r} has character {e.args[0]!r} outside GPT-2's byte map"
        ) from None


def read_gpt2_files(
    vocab_path: str | os.PathLike, merges_path: str | os.PathLike
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Reads GPT-2's vocab.json ({token: id}) and merges.txt (one "left right" pair per line)."""
    decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    for p in (vocab_path, merges_path):
        if not p.is_file():
            raise TokenizerError(f"tokenizer file {str(p)!r} does not exist")
    try:
        raw_vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{vocab_path}: not a GPT-2 vocab.json ({e})") from None
    if not isinstance(raw_vocab, dict):
        raise TokenizerError(
            f"{vocab_path}: expected a JSON object of token -> id, got {type(raw_vocab).__name__}"
        )
    vocab = {}
    for token, i in raw_vocab.items():
        if isinstance(i, bool) or not isinstance(i, int):
            raise TokenizerError(f"{vocab_path}: id of token {token!r} must be an integer, got {i!r}")
        vocab[i] = _gpt2_token_bytes(token, str(vocab_path), decoder)
    merges = []
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{merges_path}: not valid UTF-8 at byte offset {e.start}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{merges_path}:{lineno}: expected 'left right', got {line!r}")
        where = f"{merges_path}:{lineno}"
        merges.append(
            (_gpt2_token_bytes(parts[0], where, decoder), _gpt2_token_bytes(parts[1], where, decoder))
        )
    return vocab, merges


def write_gpt2_files(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                     directory: str | os.PathLike) -> tuple[str, str]:
    """Writes `directory/vocab.json` and `directory/merges.txt` in GPT-2's format."""
    encoder = bytes_to_unicode()
    to_str = lambda token: "".join(encoder[b] for b in token)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    atomic_write_text(
        vocab_path, json.dumps({to_str(t): i for i, t in sorted(vocab.items())}, ensure_ascii=False)
    )
    lines = ["#version: 0.2", *(f"{to_str(left)} {to_str(right)}" for left, right in merges)]
    atomic_write_text(merges_path, "\n".join(lines) + "\n")
    return str(vocab_path), str(merges_path)
