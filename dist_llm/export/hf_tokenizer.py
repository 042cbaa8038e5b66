"""Our byte-level BPE tokenizer <-> a Hugging Face `tokenizer.json` (the `tokenizers` library's format).

Both sides do the same thing: split out special tokens, pre-tokenize with the GPT-2 regex, then apply
merges inside each pre-token in rank order. The only translation is spelling: `tokenizer.json` stores
tokens as strings, so every byte is written as one printable character with GPT-2's byte-to-unicode
table (a space becomes "Ġ", a newline "Ċ", printable ASCII stays itself). Special tokens are stored under
their literal text, both in the BPE vocab and in `added_tokens`, which is how `tokenizers` gives them
the ids we gave them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from dist_llm.tokenizer import Tokenizer
from dist_llm.tokenizer.files import bytes_to_unicode  # GPT-2's byte -> printable character table
from dist_llm.utils.atomic_io import atomic_write_json
from dist_llm.utils.json_file import read_json


class TokenizerNotConvertible(ValueError):
    """A tokenizer.json whose behaviour our Tokenizer cannot reproduce exactly."""


@cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _spell(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _unspell(token: str, where: str) -> bytes:
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise TokenizerNotConvertible(
            f"{where}: token {token!r} has character {e.args[0]!r}, which is not in the byte-level alphabet "
            "(not a byte-level BPE vocabulary)"
        ) from None


def _special_ids(tok: Tokenizer) -> dict[int, str]:
    return {tok.token_id(s): s for s in tok.special_tokens}


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """The `tokenizer.json` document for `tok`."""
    special = _special_ids(tok)
    vocab: dict[str, int] = {}
    for token_id in sorted(tok.vocab):
        text = special.get(token_id) or _spell(tok.vocab[token_id])
        if text in vocab:
            raise TokenizerNotConvertible(
                f"tokenizer has two ids spelled {text!r} ({vocab[text]} and {token_id}); tokenizer.json "
                "needs distinct token strings"
            )
        vocab[text] = token_id
    added_tokens = [
        {"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token_id, text in sorted(special.items())
    ]  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        # ByteLevel with use_regex splits with exactly the GPT-2 pattern our pre-tokenizer uses.
        "pre_tokenizer": {
            "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,  # apply merges even when a whole pre-token is in the vocab, like ours
            "vocab": vocab,
            "merges": [f"{_spell(a)} {_spell(b)}" for a, b in tok.merges],
        },
    }


def tokenizer_config(tok: Tokenizer, model_max_length: int, eos_token: str | None) -> dict[str, Any]:
    """`tokenizer_config.json` so that `transformers.AutoTokenizer.from_pretrained` finds the fast tokenizer
    and knows the end-of-text token; no BOS/EOS is added around encoded text, as in our encode."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if eos_token is not None:
        config.update(eos_token=eos_token, bos_token=eos_token)
    if tok.special_tokens:
        config["additional_special_tokens"] = [s for s in tok.special_tokens if s != eos_token]
    return config


def write_hf_tokenizer(
    tok: Tokenizer, out_dir: str | Path, model_max_length: int, eos_token: str | None
) -> None:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "tokenizer.json", tokenizer_json(tok))
    atomic_write_json(out_dir / "tokenizer_config.json", tokenizer_config(tok, model_max_length, eos_token))


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise TokenizerNotConvertible(f"{where}: {what}")


def _merge_pair(merge: str | list[str], where: str) -> tuple[str, str]:
    parts = merge.split(" ") if isinstance(merge, str) else merge
    _require(isinstance(parts, list) and len(parts) == 2, where, f"merge {merge!r} is not a pair of tokens")
    return parts[0], parts[1]


def tokenizer_from_json(path: str | Path) -> Tokenizer:
    """Our Tokenizer from an HF `tokenizer.json`, if it is byte-level BPE with the GPT-2 pre-tokenizer.

    Anything that would make the HF tokenizer produce other ids than ours (a normalizer, another
    pre-tokenizer regex, a prefix space, byte fallback, ...) raises TokenizerNotConvertible saying what.
    """
    path = Path(path)
    where = str(path)
    doc = read_json(path, TokenizerNotConvertible)
    model = doc.get("model") or {}
    _require(model.get("type") == "BPE", where, f"model type is {model.get('type')!r}, expected 'BPE'")
    normalizer = doc.get("normalizer")
    _require(normalizer is None, where, f"has a normalizer ({normalizer}); ours has none")
    pre = doc.get("pre_tokenizer") or {}
    is_byte_level = pre.get("type") == "ByteLevel"
    is_gpt2_byte_level = is_byte_level and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    _require(
        is_gpt2_byte_level,
        where,
        "pre_tokenizer is not ByteLevel(add_prefix_space=false, use_regex=true), i.e. not the GPT-2 regex",
    )
    # Each of these changes which ids a word gets (or makes them random, for dropout).
    for key in ("byte_fallback", "ignore_merges", "continuing_subword_prefix", "end_of_word_suffix",
                "dropout"):
        _require(not model.get(key), where, f"model.{key}={model.get(key)!r} is not supported")
    added = doc.get("added_tokens") or []
    not_special = [t["content"] for t in added if not t.get("special")]
    _require(not not_special, where, f"added tokens that are not special {not_special[:5]} are not supported")

    special_tokens = [t["content"] for t in added]
    # Special tokens are stored under their literal text, not byte-spelled, so they are taken from
    # added_tokens; every other vocab entry is a byte-spelled string.
    vocab = {t["id"]: t["content"].encode("utf-8") for t in added}
    for text, token_id in model["vocab"].items():
        if text not in special_tokens:
            vocab[token_id] = _unspell(text, where)
    merges = []
    for merge in model.get("merges", []):
        a, b = _merge_pair(merge, where)
        merges.append((_unspell(a, where), _unspell(b, where)))
    return Tokenizer(vocab, merges, special_tokens=special_tokens or None)
