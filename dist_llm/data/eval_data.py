"""What `python -m dist_llm.evaluate --data ...` evaluates: a prepared data dir's split, or text files.

Text (`.txt`, `.jsonl`, gzipped or not; files, directories or globs, as for data preparation) is
tokenized with the model's own tokenizer into a cache, CACHE/eval/<key>/, where the key is made of the
resolved input paths and the tokenizer's fingerprint; the token file is rebuilt when an input or the
tokenizer changes (prepare's own check of sizes, times and hashes) and reused otherwise. All of it is
evaluated: there is no split. The name of what was evaluated (the files' stems, or the data dir's name
and split) names the output, RUN/eval_NAME.json, so evaluating other data never overwrites a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from dist_llm.data import DataError, prepare_corpus, resolve_inputs
from dist_llm.data.meta import META_NAME
from dist_llm.tokenizer import Tokenizer

SMALL_INPUT_BYTES = 16 << 20  # below this, one process tokenizes faster than a pool starts


@dataclass(frozen=True)
class EvalData:
    data_dir: str  # prepared: meta.json and the split's token file
    split: str
    name: str  # for the output file and the table
    inputs: list[str]  # what the user gave


def is_prepared(data: list[str]) -> bool:
    return len(data) == 1 and (Path(data[0]) / META_NAME).is_file()


def _name(files: list[Path]) -> str:
    stems = [f.name.split(".")[0] for f in files]
    return stems[0] if len(stems) == 1 else f"{stems[0]}_and_{len(stems) - 1}_more"


def resolve_eval_data(data: list[str], split: str | None, tokenizer: Tokenizer, cache_dir: str,
                      text_field: str = "text") -> EvalData:
    """The prepared split to evaluate; text inputs (.txt, .jsonl, Parquet, compressed; text_field names
    the JSONL field / Parquet column) are tokenized into the cache first (on this process: under several
    ranks, call it on rank 0 and hand the result on)."""
    if is_prepared(data):
        split = split or "val"
        return EvalData(data[0], split, f"{Path(data[0]).resolve().name}_{split}", list(data))
    if len(data) == 1 and Path(data[0]).is_dir() and not any(Path(data[0]).iterdir()):
        raise DataError(f"{data[0]}: {META_NAME} not found, and the directory is empty: give a prepared data "
                        f"dir (python -m dist_llm.data.prepare) or .txt/.jsonl files")
    if split is not None:
        raise DataError(f"--split {split}: text inputs are evaluated whole; --split applies to a prepared "
                        f"data dir")
    try:
        files = resolve_inputs(data)
    except DataError as e:
        hint = f" (a prepared data dir needs {META_NAME})" if any(Path(d).is_dir() for d in data) else ""
        raise DataError(f"{e}{hint}") from None
    key = hashlib.sha256("\0".join([tokenizer.fingerprint, text_field, *(str(f.resolve()) for f in files)])
                         .encode())
    out_dir = Path(cache_dir) / "eval" / key.hexdigest()[:16]
    workers = 1 if sum(f.stat().st_size for f in files) < SMALL_INPUT_BYTES else None
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the result table
        prepare_corpus(files, tokenizer, out_dir, workers=workers, val_fraction=0.0, text_field=text_field,
                       progress=sys.stderr.isatty())
    return EvalData(str(out_dir), "train", _name(files), list(data))
