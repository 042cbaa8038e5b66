"""Crash-safe file writes, shared by the trainer, checkpoints, data preparation and the after-training
commands (export, evaluate, plot).

A reader must never find a half-written file that looks complete, so every output is written to a
temporary name in the destination directory, fsynced, and only then renamed over the final name
(os.replace is atomic within one filesystem). Directories built file by file (checkpoints) use the same
idea one level up: fill a temporary directory, fsync it, rename it.

The temporary names are created here rather than with tempfile.mkstemp/mkdtemp: those make them 0600/0700,
and the rename would carry that over, leaving outputs unreadable to the other users of a shared filesystem.
Creating them with mode 0666/0777 lets the kernel apply the umask (or a directory's default ACL) exactly as
for a plain open()/mkdir(), without reading the process-wide umask, which os.umask can only do by setting it.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` to produce the file, then move it into place as `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f".{path.name}.", ".tmp", _create_file)
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        write(tmp)
        # A writer may replace the file instead of filling it: safetensors >= 0.8 saves through its own 0600
        # temporary file renamed over `tmp`. Put back the permissions a plain open() gave.
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def make_temp_dir(parent: str | Path, prefix: str, suffix: str) -> Path:
    """A new empty directory `parent/{prefix}{random}{suffix}` with the permissions mkdir gives (mkdtemp's
    are 0700, which a rename into place would keep)."""
    return _create_unique(Path(parent), prefix, suffix, lambda p: os.mkdir(p, 0o777))


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _create_unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """`create` a name no one else has (O_EXCL / mkdir fail if it exists), as tempfile does."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{parent}: no unused temporary name {prefix}*{suffix} after 100 tries")


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
