"""Reference bits per byte for the validation text: what a model has to beat to have learned anything.

Two simple predictors, scored on exactly the text the trainer's validation loss is measured on (the
target tokens of the fixed validation windows; see evaluation.py):

- unigram: every token with its frequency in the train split (add-one smoothed over the tokenizer's
  vocabulary), ignoring all context. A model above it has not even learned which tokens are common.
- gzip: `gzip -9` of the validation text, in bits per byte of that text. It exploits repeats within the
  whole validation text, longer than one window, which the model cannot see: a strict reference.

Bits per byte are counted as val_bpb is: the summed bits over all target tokens (separators included)
divided by the UTF-8 bytes the tokens stand for (special tokens count 0 bytes).
"""

from __future__ import annotations

import gzip
import math

import numpy as np

# Counting the train split's tokens reads at most this many of them, in evenly spaced blocks: enough
# for a unigram model, and seconds at most on a corpus of any size.
MAX_COUNTED_TOKENS = 1 << 25
_BLOCK = 1 << 20


def token_counts(token_arrays: list[np.ndarray], vocab_size: int,
                 max_tokens: int = MAX_COUNTED_TOKENS) -> np.ndarray:
    """How often each id in [0, vocab_size) occurs in the arrays (a sample of evenly spaced blocks of
    them when they hold more than max_tokens tokens)."""
    total = sum(len(a) for a in token_arrays)
    stride = _BLOCK * max(1, math.ceil(total / max_tokens))
    counts = np.zeros(vocab_size, dtype=np.int64)
    for tokens in token_arrays:
        for start in range(0, len(tokens), stride):
            block = np.asarray(tokens[start:start + _BLOCK], dtype=np.int64)
            counts += np.bincount(block, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_bpb(counts: np.ndarray, num_ids: int, targets: np.ndarray, byte_lengths: np.ndarray) -> float:
    """Bits per byte of `targets` under the add-one smoothed unigram model of `counts` over ids
    [0, num_ids). byte_lengths[id]: the UTF-8 bytes token id stands for (0 for special tokens)."""
    smoothed = counts[:num_ids].astype(np.float64) + 1.0
    bits = -np.log2(smoothed / smoothed.sum())
    targets = np.asarray(targets, dtype=np.int64).ravel()
    return float(bits[targets].sum() / max(int(byte_lengths[targets].sum()), 1))


def gzip_bpb(text: bytes) -> float:
    """Bits per byte of `text` compressed by gzip at level 9 (header and trailer included)."""
    return 8.0 * len(gzip.compress(text, compresslevel=9, mtime=0)) / max(len(text), 1)


def reference_bpb(train_arrays: list[np.ndarray], val_windows: np.ndarray, vocab: dict[int, bytes],
                  special_ids: set[int], vocab_size: int) -> dict[str, float]:
    """{'unigram_bpb', 'gzip_bpb'} for the targets of `val_windows` (rows of context_length + 1 tokens,
    in stream order), with the unigram model fit on `train_arrays`. vocab: the tokenizer's id -> bytes;
    ids >= vocab_size or special stand for no text."""
    text_of = {i: b"" if i in special_ids or i >= vocab_size else b for i, b in vocab.items()}
    byte_lengths = np.zeros(vocab_size, dtype=np.int64)
    for i, b in text_of.items():
        if i < vocab_size:
            byte_lengths[i] = len(b)
    targets = np.asarray(val_windows)[:, 1:]
    num_ids = min(vocab_size, len(vocab))
    counts = token_counts(train_arrays, vocab_size)
    text = b"".join(text_of.get(int(i), b"") for i in targets.ravel())
    return {"unigram_bpb": unigram_bpb(counts, num_ids, targets, byte_lengths), "gzip_bpb": gzip_bpb(text)}
