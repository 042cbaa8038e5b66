"""Reference bits per byte (unigram, gzip) on small texts whose answer is known."""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest

from dist_llm.training.references import gzip_bpb, reference_bpb, token_counts, unigram_bpb


def test_unigram_bpb_by_hand():
    counts = token_counts([np.array([1, 1, 1, 2], dtype=np.uint16)], vocab_size=3)
    assert counts.tolist() == [0, 3, 1]
    # add-one smoothing over ids 0..2: p = (1, 4, 2) / 7; targets 1 and 2 stand for 1 and 2 bytes
    expected = (-math.log2(4 / 7) - math.log2(2 / 7)) / 3
    got = unigram_bpb(counts, 3, np.array([[1, 2]]), np.array([0, 1, 2]))
    assert got == pytest.approx(expected, rel=1e-12)


def test_gzip_bpb_is_the_gzip_size_in_bits_per_byte():
    rng = random.Random(0)
    text = b"the cat sat on the mat. " * 40 + bytes(rng.randrange(256) for _ in range(100))
    # an independent gzip stream of the same data (zlib's gzip container, header without a name): same size
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    expected = stream.compress(text) + stream.flush()
    assert gzip_bpb(text) == pytest.approx(8 * len(expected) / len(text), rel=1e-12)
    assert gzip_bpb(b"a" * 10_000) < 0.05
    noise = bytes(rng.randrange(256) for _ in range(5000))
    assert 8.0 < gzip_bpb(noise) < 8.2  # incompressible: 8 bits a byte plus the header


def test_references_score_the_window_targets_as_val_bpb_counts_them():
    # ids: 0 = the separator (special, 0 bytes), 1 = "a", 2 = "bc"; 3 = an id beyond the tokenizer
    vocab = {0: b"<|endoftext|>", 1: b"a", 2: b"bc"}
    train = [np.array([1, 2, 2, 0, 1, 1], dtype=np.uint16)]
    windows = np.array([[0, 1, 2], [2, 1, 0]])  # targets: 1 2 | 1 0
    refs = reference_bpb(train, windows, vocab, special_ids={0}, vocab_size=4)
    assert refs["gzip_bpb"] == pytest.approx(gzip_bpb(b"abca"), rel=1e-12)
    p = {0: 2 / 9, 1: 4 / 9, 2: 3 / 9}  # counts (1, 3, 2) + 1 each over the tokenizer's 3 ids
    bits = -math.log2(p[1]) - math.log2(p[2]) - math.log2(p[1]) - math.log2(p[0])  # the separator costs bits
    assert refs["unigram_bpb"] == pytest.approx(bits / 4, rel=1e-12)  # ... but stands for no bytes


def test_counting_a_large_split_reads_evenly_spaced_blocks():
    tokens = np.zeros(5 << 20, dtype=np.uint16)
    tokens[(3 << 20):] = 1  # the last 2M tokens are ones
    exact = token_counts([tokens], 2, max_tokens=1 << 30)
    assert exact.tolist() == [3 << 20, 2 << 20]
    sampled = token_counts([tokens], 2, max_tokens=2 << 20)  # every third 1M block: 0, 3
    assert sampled.tolist() == [1 << 20, 1 << 20]
