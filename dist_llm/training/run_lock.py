"""One trainer per run directory: rank 0 holds an OS lock on RUN/train.lock for the whole run.

Two trainers writing one run directory (a SLURM requeue overlapping a manual resume, two array tasks given
the same config, a trainer left running under a killed wrapper) interleave their metrics and delete each
other's checkpoints mid-write. The lock is fcntl.flock on an open file: the kernel releases it when the
holder's process ends, however it ends (SIGKILL, a node's OOM killer), so a crash never leaves a stale
lock to remove by hand. The file's content only says who holds it: host, PID, job id, start time.
Read-only commands (generate, evaluate, export, plot) take no lock.

flock works on local file systems and on NFS (Linux emulates it with NFS byte-range locks); on a
file system without locking the lock cannot be taken, and the error says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_FILE = "train.lock"


_held_fds: set[int] = set()  # this process's lock descriptors


def _close_in_forked_child() -> None:
    # A forked worker (the tokenizer's or the data preparation's pool) shares the lock's open file; one
    # that outlived a killed trainer would keep the run dir locked. The child closes its copy at once.
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_in_forked_child)


class RunLockError(RuntimeError):
    """The run directory is held by another trainer (the message names it and how to stop it)."""


def holder_info() -> dict[str, Any]:
    """Who this process is, as another trainer's error message will name it."""
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun's job; its agent is this process's parent
        info["torchrun_run_id"] = os.environ["TORCHELASTIC_RUN_ID"]
        info["torchrun_agent_pid"] = os.getppid()
    return info


def describe_holder(info: dict[str, Any]) -> str:
    """'PID 123 on host h (SLURM job 9), started ...; stop it with ...' from a lock file's content."""
    pid, host = info.get("pid", "?"), info.get("host", "?")
    text = f"PID {pid} on {host}"
    if "slurm_job_id" in info:
        text += f" (SLURM job {info['slurm_job_id']})"
    elif "torchrun_agent_pid" in info:
        text += f" (under torchrun, agent PID {info['torchrun_agent_pid']})"
    text += f", started {info.get('started', '?')}"
    if "slurm_job_id" in info:
        how = f"scancel --signal=USR1 {info['slurm_job_id']} (it checkpoints and exits)"
    else:
        target = info.get("torchrun_agent_pid", pid)
        how = f"kill -TERM {target} on {host} (it checkpoints and exits)"
    return f"{text}; stop it with {how}, or give this run another --run.dir"


class RunLock:
    """The held lock; release() (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int, created_dir: bool) -> None:
        self.path, self._fd, self._created_dir = path, fd, created_dir

    def release(self) -> None:
        if self._fd < 0:
            return
        run_dir = self.path.parent
        # A run that failed before writing anything leaves no folder behind (only while still holding the
        # lock: a trainer waiting for it fails at once, it never waits, so no one can be left holding
        # a lock on the removed file while another trainer creates a new one).
        if self._created_dir and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            with contextlib.suppress(OSError):
                self.path.unlink()
                run_dir.rmdir()
        _held_fds.discard(self._fd)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_run_lock(run_dir: str | Path) -> RunLock:
    """Take RUN/train.lock without waiting, or raise RunLockError naming the trainer that holds it."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockError(f"run dir {run_dir} is in use by another trainer: {describe_holder(info)}. "
                               f"One trainer per run directory (lock file {path})") from None
        raise RunLockError(f"cannot lock {path} ({e.strerror}): this file system does not support file "
                           f"locks; put run.dir on one that does") from None
    # Ours now: record who holds it (rewritten in place, never replaced: the lock is on this inode).
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder_info(), indent=1) + "\n").encode(), 0)
    _held_fds.add(fd)
    return RunLock(path, fd, created)
