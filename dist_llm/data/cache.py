"""Whether a prepared directory already holds what a preparation would write (then it does nothing).

The record is meta.json (or a part's part.json): the inputs (path, size, mtime, sha256), the tokenizer
fingerprint, the options and, for a part, which part of which input list. A rerun that matches all of
them, with every token file present at its recorded size, is a cache hit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dist_llm.data.errors import DataError
from dist_llm.data.meta import read_meta, split_files
from dist_llm.utils.file_hash import file_sha256

SPLITS = ("train", "val")


def describe_inputs(files: list[Path], previous: list[dict] | None = None) -> list[dict]:
    """Path, size, mtime and sha256 of each input; a previous hash is reused when size and mtime match."""
    known = {d["path"]: d for d in previous or []}
    described = []
    for path in files:
        st = path.stat()
        entry = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        old = known.get(entry["path"])
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            entry["sha256"] = old["sha256"]
        else:
            entry["sha256"] = file_sha256(path)
        described.append(entry)
    return described


def _same_inputs(a: list[dict], b: list[dict]) -> bool:
    """A touched file with the same content is unchanged; mtimes are only a shortcut for hashing."""
    def key(described: list[dict]) -> list[tuple]:
        return [(d["path"], d["size"], d["sha256"]) for d in described]

    return key(a) == key(b)


def cached_meta(out_dir: Path, files: list[Path], fingerprint: str, options: dict, meta_name: str,
                part: dict | None = None) -> dict | None:
    """The existing meta.json (part.json) when it describes exactly this preparation, files intact."""
    if not (out_dir / meta_name).exists():
        return None
    try:
        meta = read_meta(out_dir, meta_name)
    except DataError:
        return None
    if (meta.get("tokenizer_fingerprint") != fingerprint or meta.get("options") != options
            or meta.get("part") != part):
        return None
    try:
        for split in SPLITS:
            itemsize = np.dtype(meta["dtype"]).itemsize
            for name, num_tokens in split_files(meta, split):
                path = out_dir / name
                if not path.exists() or path.stat().st_size != num_tokens * itemsize:
                    return None
        if part is None and options["val_fraction"] > 0 and meta["splits"]["val"]["num_tokens"] == 0:
            return None  # built before the last-tokens rule (prepare._cut_validation_tail), which fills val
    except (KeyError, TypeError, ValueError):  # a meta.json edited by hand: rebuild rather than trust it
        return None
    current = describe_inputs(files, meta.get("inputs"))
    return meta if _same_inputs(current, meta.get("inputs", [])) else None
