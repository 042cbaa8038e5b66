"""Checks the trainer runs before any work (tokenizer, data, model): whatever can fail without the data
fails here, in one line, instead of after minutes of preparation or as a traceback from deep inside.

Rank 0 checks that the run and cache directories can be written, then takes the run directory's lock
(dist_llm/training/run_lock.py); every rank gets the outcome, so all of them stop together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from dist_llm.config import RunConfig
from dist_llm.parallel import distributed
from dist_llm.training.run_lock import acquire_run_lock

_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a path component is a file"}


class PreflightError(RuntimeError):
    """The run cannot start here (a directory that cannot be written, a run directory in use)."""


def os_reason(e: OSError) -> str:
    """A short, lower-case reason for an OSError: 'read-only file system', 'permission denied'..."""
    return _REASONS.get(e.errno or 0, (e.strerror or str(e)).lower())


def check_writable(path: str | Path, what: str) -> None:
    """Raise PreflightError unless files can be created in `path` (or, while it does not exist yet, in
    its nearest existing parent, where it will be created). Leaves nothing behind."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PreflightError(f"{what} {path} is not writable ({existing} is a file, not a directory)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PreflightError(f"{what} {path} is not writable ({os_reason(e)})") from None


def check_run_setup(cfg: RunConfig, cleanup: contextlib.ExitStack) -> None:
    """Before any work, on rank 0 (every rank raises if it fails): the run and cache directories can be
    written, and no other trainer holds the run directory. The lock is held until `cleanup` closes."""

    def check() -> None:
        check_writable(cfg.run.dir, "run dir")
        check_writable(cfg.run.cache_dir, "cache dir")
        try:
            cleanup.enter_context(acquire_run_lock(cfg.run.dir))
        except OSError as e:  # e.g. the directory vanished or filled up between the check and the lock
            raise PreflightError(f"run dir {cfg.run.dir} is not writable ({os_reason(e)})") from None

    distributed.on_main_rank(check)
