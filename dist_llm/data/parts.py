"""Preparation spread over many machines: --part I/N, then merge.

    python -m dist_llm.data.prepare --input ... --tokenizer T --out OUT/part-0 --part 0/4  # machine 0
    ...                                                                                  # machines 1-3
    python -m dist_llm.data.prepare merge OUT/part-*                           # writes OUT/meta.json

Which files go to which part: the resolved input list (the same on every machine: it is sorted, see
sources.resolve_inputs) is cut into N contiguous runs of about equal total size, part I (counting from
0, as SLURM array task ids do) taking run I. Contiguous runs, joined in part order, give back the
input order, and the train/val choice of a document depends only on its file name and its index in
that file (prepare.is_validation_doc), so the merged token streams are exactly those of a one-machine
prepare of the same inputs, and so are the windows (they cross file boundaries, see memmap_tokens.py)
and the content fingerprint. A part writes `part.json` instead of `meta.json`, so it is never taken
for a whole data set.

One difference: a one-machine prepare of a corpus whose whole documents leave a split empty (one huge
document, say) takes the last tokens as validation instead. Parts cannot know that of the whole corpus,
so merge refuses such a corpus: prepare it on one machine (it is small, or it is one document).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from dist_llm.data.errors import DataError
from dist_llm.data.meta import META_NAME, PART_META_NAME, read_meta, split_files, write_meta

# Keys that must be equal in every part: what the tokens are made with.
_MUST_MATCH = ("tokenizer_fingerprint", "options", "format_version", "dtype", "separator", "separator_id",
               "vocab_size")
_SPLITS = ("train", "val")


def parse_part(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), with 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise DataError(f"--part {text!r}: expected I/N, e.g. 0/8 for the first of 8 parts") from None
    if count < 1 or not 0 <= index < count:
        raise DataError(f"--part {text!r}: I must be in 0..N-1 (parts count from 0, like SLURM array ids)")
    return index, count


def inputs_digest(files: list[Path]) -> str:
    """Identifies the whole input list a part was cut from: every part must agree on it."""
    listing = [[str(p.resolve()), p.stat().st_size] for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def part_files(files: list[Path], index: int, count: int) -> list[Path]:
    """The contiguous run of `files` that part `index` of `count` prepares (balanced by file size)."""
    sizes = [max(p.stat().st_size, 1) for p in files]
    total = sum(sizes)
    chosen, before = [], 0
    for path, size in zip(files, sizes, strict=True):
        # the part whose byte range holds the file's middle: non-decreasing along the list, so contiguous
        if (before + size / 2) * count // total == index:
            chosen.append(path)
        before += size
    return chosen


def merge_parts(part_dirs: list[str | Path], out_dir: str | Path | None = None) -> dict[str, Any]:
    """Check that the parts belong together and write out_dir/meta.json listing all their token files
    (paths relative to out_dir; default out_dir: the directory that holds the part directories)."""
    dirs = [Path(d) for d in part_dirs]
    if not dirs:
        raise DataError("merge: give the part directories")
    parents = [d.resolve().parent for d in dirs]
    out = Path(out_dir) if out_dir is not None else Path(os.path.commonpath(parents))
    metas = [read_meta(d, PART_META_NAME) for d in dirs]
    first = metas[0]
    count = first["part"]["count"]
    for d, meta in zip(dirs, metas, strict=True):
        for key in _MUST_MATCH + ("part.count", "part.inputs_digest"):
            a, b = _get(meta, key), _get(first, key)
            if a != b:
                raise DataError(f"merge: {d} has {key} = {a!r} but {dirs[0]} has {b!r}; all parts must be "
                                "prepared from the same inputs with the same tokenizer and options")
    indices = sorted(m["part"]["index"] for m in metas)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        twice = sorted({i for i in indices if indices.count(i) > 1})
        raise DataError(f"merge: expected parts 0..{count - 1} once each; missing {missing}, given twice "
                        f"{twice}")
    order = sorted(range(len(dirs)), key=lambda k: metas[k]["part"]["index"])
    splits = {}
    for split in _SPLITS:
        files = []
        for k in order:
            for name, n in split_files(metas[k], split):
                path = dirs[k] / name
                size = path.stat().st_size if path.exists() else None
                if size != n * _itemsize(first):
                    raise DataError(f"merge: {path} has {size} bytes, but {dirs[k]}/{PART_META_NAME} says "
                                    f"{n} tokens; re-run that part")
                files.append({"file": os.path.relpath(path.resolve(), out.resolve()), "num_tokens": n})
        splits[split] = {"files": files, "num_tokens": sum(f["num_tokens"] for f in files),
                         "num_documents": sum(metas[k]["splits"][split]["num_documents"] for k in order)}
    docs = {s: splits[s]["num_documents"] for s in _SPLITS}
    if docs["train"] + docs["val"] == 0:
        raise DataError(f"merge: empty corpus: no documents in any of the {count} parts")
    if first["options"]["val_fraction"] > 0 and 0 in docs.values():
        raise DataError(f"merge: whole documents left the {'train' if docs['train'] == 0 else 'val'} split "
                        "empty; such a corpus (very few documents) is prepared on one machine, which then "
                        "takes the last tokens as validation")
    meta = {k: v for k, v in first.items() if k not in ("part", "build")}
    num_bytes = sum(metas[k]["num_input_bytes"] for k in order)
    num_tokens = splits["train"]["num_tokens"] + splits["val"]["num_tokens"]
    meta.update(splits=splits, val_split="documents", num_input_bytes=num_bytes,
                bytes_per_token=num_bytes / max(num_tokens, 1),
                inputs=[d for k in order for d in metas[k]["inputs"]],
                bad_records=sum(metas[k].get("bad_records", 0) for k in order),
                build={"parts": [str(dirs[k]) for k in order],
                       "seconds_per_part": [metas[k]["build"]["seconds"] for k in order]})
    out.mkdir(parents=True, exist_ok=True)
    write_meta(out, meta)
    return meta


def _get(meta: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        meta = meta.get(key) if isinstance(meta, dict) else None  # type: ignore[assignment]
    return meta


def _itemsize(meta: dict) -> int:
    import numpy as np

    return np.dtype(meta["dtype"]).itemsize


def merge_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_llm.data.prepare merge",
                                     description="Join the parts of a --part I/N preparation.")
    parser.add_argument("parts", nargs="+", help="the part directories (each holds a part.json)")
    parser.add_argument("--out", help=f"where to write {META_NAME} (default: the directory that holds the "
                                      "part directories)")
    args = parser.parse_args(argv)
    try:
        meta = merge_parts(args.parts, args.out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    s = meta["splits"]
    print(f"merged {len(args.parts)} parts: {s['train']['num_tokens']:,} train + {s['val']['num_tokens']:,} "
          f"val tokens in {len(s['train']['files']) + len(s['val']['files'])} files")
    return 0
