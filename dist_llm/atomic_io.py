"""Crash-safe file writes, shared by the trainer, checkpoints, data preparation and the after-training
commands (export, evaluate, plot).

A reader must never find a half-written file that looks complete, so every output is written to a
temporary name in the destination directory, fsynced, and only then renamed over the final name
(os.replace is atomic within one filesystem). Directories built file by file (checkpoints) use the same
idea one level up: fill a temporary directory, fsync it, rename it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` to produce the file, then move it into place as `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's contents to disk (a directory: its entries, e.g. a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
