"""meta.json of a prepared data directory: what the token files hold and how they were made.

Shared by the writer (prepare.py) and the readers (memmap_tokens.py), so both agree on the format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dist_llm.atomic_io import atomic_write_json
from dist_llm.data.sources import DataError
from dist_llm.json_file import read_json

FORMAT_VERSION = 1
META_NAME = "meta.json"
_REQUIRED_KEYS = ("format_version", "dtype", "splits", "tokenizer_fingerprint", "vocab_size")


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def content_fingerprint(meta: dict[str, Any], split: str) -> str:
    """What a split's tokens are made of: the inputs' contents (sha256, in order; not their paths, so moved
    files match), the preparation options and the tokenizer. Equal fingerprints, equal token files."""
    identity = {"inputs": [d.get("sha256") for d in meta.get("inputs", [])], "options": meta.get("options"),
                "tokenizer": meta["tokenizer_fingerprint"], "format": meta["format_version"], "split": split}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(out_dir) / META_NAME, meta)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """The parsed meta.json, with a clear error when it is missing, unreadable or of another format."""
    path = Path(data_dir) / META_NAME
    if not path.exists():
        raise DataError(f"{path} not found: {data_dir} is not a prepared data directory (or its preparation "
                        "did not finish); run python -m dist_llm.data.prepare --input ... --out "
                        f"{data_dir} --tokenizer ...")
    meta = read_json(path, DataError, "; re-run python -m dist_llm.data.prepare")
    missing = [k for k in _REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; re-run python -m dist_llm.data.prepare")
    if meta["format_version"] != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {meta['format_version']} but this dist_llm reads "
                        f"{FORMAT_VERSION}; re-run python -m dist_llm.data.prepare")
    return meta
