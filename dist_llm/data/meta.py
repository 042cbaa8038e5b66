"""meta.json of a prepared data directory: what the token files hold and how they were made.

Shared by the writer (prepare.py) and the readers (memmap_tokens.py), so both agree on the format.

Format 2 lists each split's token files, `splits[s]["files"] = [{"file", "num_tokens"}, ...]`, whose
concatenation is the split's token stream (prepare cuts it into shards of at most --shard-size tokens,
and a merge of --part preparations lists every part's files). Format 1 had one `splits[s]["file"]`; it
is still read. The token stream itself is unchanged since format 1, so the content fingerprint, which
says what the tokens are, does not depend on the format version or on how the stream is cut into files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dist_llm.data.errors import DataError
from dist_llm.utils.atomic_io import atomic_write_json
from dist_llm.utils.json_file import read_json

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
TOKEN_LAYOUT_VERSION = 1  # each document's tokens then the separator; what content_fingerprint covers
META_NAME = "meta.json"
PART_META_NAME = "part.json"  # what a --part preparation writes instead of meta.json (see parts.py)
_REQUIRED_KEYS = ("format_version", "dtype", "splits", "tokenizer_fingerprint", "vocab_size")


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def content_fingerprint(meta: dict[str, Any], split: str) -> str:
    """What a split's tokens are made of: the inputs' contents (sha256, in order; not their paths, so moved
    files match), the preparation options and the tokenizer. Equal fingerprints, equal token streams (cut
    into files in any way: one file, shards, or the parts of a multi-machine preparation)."""
    identity = {"inputs": [d.get("sha256") for d in meta.get("inputs", [])], "options": meta.get("options"),
                "tokenizer": meta["tokenizer_fingerprint"], "format": TOKEN_LAYOUT_VERSION, "split": split}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def split_files(meta: dict[str, Any], split: str) -> list[tuple[str, int]]:
    """(file name relative to the data directory, token count) of each token file of `split`, in order."""
    info = meta["splits"][split]
    if "files" in info:
        return [(str(f["file"]), int(f["num_tokens"])) for f in info["files"]]
    return [(str(info["file"]), int(info["num_tokens"]))]  # format 1: one file per split


def write_meta(out_dir: Path, meta: dict[str, Any], name: str = META_NAME) -> None:
    atomic_write_json(Path(out_dir) / name, meta)


def read_meta(data_dir: str | Path, name: str = META_NAME) -> dict[str, Any]:
    """The parsed meta.json, with a clear error when it is missing, unreadable or of another format."""
    path = Path(data_dir) / name
    if not path.exists():
        if (Path(data_dir) / PART_META_NAME).exists() and name == META_NAME:
            raise DataError(f"{path} not found: {data_dir} holds one part of a multi-machine preparation "
                            "(--part); join all parts with python -m dist_llm.data.prepare merge PART_DIR...")
        raise DataError(f"{path} not found: {data_dir} is not a prepared data directory (or its preparation "
                        "did not finish); run python -m dist_llm.data.prepare --input ... --out "
                        f"{data_dir} --tokenizer ...")
    meta = read_json(path, DataError, "; re-run python -m dist_llm.data.prepare")
    missing = [k for k in _REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; re-run python -m dist_llm.data.prepare")
    if meta["format_version"] not in READABLE_VERSIONS:
        raise DataError(f"{path}: format_version {meta['format_version']} but this dist_llm reads "
                        f"{FORMAT_VERSION}; re-run python -m dist_llm.data.prepare")
    return meta
