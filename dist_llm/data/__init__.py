"""Corpus preparation into memory-mapped token files, and sharded, resumable batch loading.

    python -m dist_llm.data.prepare --input PATH [PATH ...] --tokenizer DIR --out DIR [--workers N]

Modules, one idea each: sources (finding and chunking inputs), formats (gzip, zstd and Parquet
reading), prepare (parallel tokenization to token files + meta.json), shards (a split's stream as
files of at most --shard-size tokens), parts (--part I/N preparation on many machines, and merge),
cache (whether a prepared directory is up to date), meta (the meta.json format), stories (the default
built-in corpus, generated), builtin_corpus (the stdlib-docs corpus), memmap_tokens (windows over a
split's token files), sampler (the global resumable sample order), mixture (weighted sources as one
blended stream), loader (ShardedBatchLoader, get_batch).

Importing this package is cheap: names are resolved on first use, so neither numpy nor torch is
imported until a data class or function is actually needed.
"""

from __future__ import annotations

import importlib
from typing import Any

# The token that ends each document in prepared data (and in the built-in corpora): a special token of
# every tokenizer the trainer trains, and the "end of text" generation stops at.
DOCUMENT_SEPARATOR = "<|endoftext|>"

_EXPORTS = {
    "DataError": "dist_llm.data.sources",
    "resolve_inputs": "dist_llm.data.sources",
    "prepare_corpus": "dist_llm.data.prepare",
    "merge_parts": "dist_llm.data.parts",
    "builtin_corpus_path": "dist_llm.data.builtin_corpus",
    "MemmapTokens": "dist_llm.data.memmap_tokens",
    "read_meta": "dist_llm.data.meta",
    "GlobalWindowStream": "dist_llm.data.sampler",
    "MixtureStream": "dist_llm.data.mixture",
    "MixtureTokens": "dist_llm.data.mixture",
    "ShardedBatchLoader": "dist_llm.data.loader",
    "get_batch": "dist_llm.data.loader",
    "resolve_device": "dist_llm.data.loader",
}

__all__ = sorted([*_EXPORTS, "DOCUMENT_SEPARATOR"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dist_llm.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
