"""Shared pieces of the launch tests (tests/test_launch_*.py): a tiny run config, launcher processes run
under timeouts and always cleaned up, and readers for what a run leaves in its directory.

The tests start the real launchers (torchrun, the scripts in launch/ and slurm/, accelerate) on the
real trainer; everything is small enough for a 2-core CPU machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def write_tiny_config(directory: Path, *, max_steps: int, checkpoint_interval: int = 0) -> Path:
    """A corpus of 400 short documents and a ~30k-parameter model config; returns the TOML path.

    The tokenizer and token files go to directory/cache, which later runs with the same config reuse.
    """
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    if not corpus.exists():
        rng = random.Random(0)
        words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house",
                 "with", "small", "green", "tree", "near", "old", "car"]
        docs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "." for _ in range(400)]
        corpus.write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    config = directory / f"tiny_{max_steps}_{checkpoint_interval}.toml"
    config.write_text(f"""
[run]
cache_dir = "{directory / 'cache'}"
[model]
vocab_size = 300
context_length = 32
d_model = 32
num_layers = 1
num_heads = 2
d_ff = 64
[tokenizer]
num_workers = 1
[data]
inputs = ["{corpus}"]
val_fraction = 0.1
num_workers = 1
[optim]
warmup_steps = 1
[train]
global_batch_tokens = 256
micro_batch_size = 4
max_steps = {max_steps}
[eval]
interval = 0
num_windows = 4
sample_tokens = 4
[checkpoint]
interval = {checkpoint_interval}
keep_last = 2
[log]
interval = 1
progress_bar = false
""", encoding="utf-8")
    return config


GLOBAL_BATCH_TOKENS = 256  # as in write_tiny_config


def launch_env(**extra: str) -> dict[str, str]:
    """This interpreter for the scripts (PYTHON), unbuffered output, one thread per process."""
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc; Linux only, like the launchers under test)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # /proc/PID/stat: "PID (comm) STATE PPID ...", and comm may contain spaces
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
            if ppid == pid:
                children.append(int(entry.name))
    return children


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (torchrun puts its workers in new sessions, so a
    process-group kill would miss them)."""
    if proc.poll() is None:
        tree, todo = [], [proc.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += child_pids(pid)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


class Launched:
    """A launcher process whose output goes to a log file (no pipe to fill up and block it)."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str], cwd: Path = REPO) -> None:
        self.cmd, self.log = cmd, log
        with open(log, "wb") as out:
            # SIGINT as in a terminal: a test runner started in the background passes SIGINT on ignored.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code; a launcher still running after `timeout` seconds is killed and the test fails."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc)
            pytest.fail(f"{' '.join(self.cmd)} still running after {timeout} s; output:\n"
                        f"{self.output()[-4000:]}")

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `condition`; fail if the launcher exits first or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"launcher exited ({self.proc.returncode}) before {what}; output:\n"
                            f"{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout} s; output:\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        kill_tree(self.proc)


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """LOCAL_RANK -> pid of torchrun's worker processes (its children with LOCAL_RANK set)."""
    workers = {}
    for pid in child_pids(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"LOCAL_RANK="):
                workers[int(item.split(b"=", 1)[1])] = pid
    return workers


def kill_a_worker_after_the_first_checkpoint(cmd: list[str], run_dir: Path, log: Path, env: dict[str, str],
                                             max_steps: int) -> tuple[str, int]:
    """Launch torchrun (2 workers, restarts allowed), SIGKILL its local rank 1 once a checkpoint is
    complete, and wait for the launcher to exit 0; returns its output and the step of that checkpoint."""
    job = Launched(cmd, log, env)
    try:
        job.wait_until(lambda: complete_checkpoints(run_dir), timeout=180, what="first checkpoint")
        killed_after = max(complete_checkpoints(run_dir))
        os.kill(worker_pids(job.proc.pid)[1], signal.SIGKILL)
        assert job.wait(timeout=240) == 0, job.output()[-4000:]
    finally:
        job.cleanup()
    assert killed_after < max_steps, "the run ended before the worker could be killed"
    return job.output(), killed_after


def trained_steps(run_dir: Path) -> list[int]:
    """The steps with a train_loss line in RUN/metrics.jsonl, in file order."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "train_loss" in r]


def complete_checkpoints(run_dir: Path) -> dict[int, Path]:
    """step -> checkpoint dir, for the checkpoints with their COMPLETE marker."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return {}
    return {int(d.name.split("_")[1]): d for d in root.glob("step_*") if (d / "COMPLETE").exists()}


def trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def assert_finished(run_dir: Path, max_steps: int, world_size: int, output: str) -> None:
    """The run reached max_steps as if uninterrupted: a complete final checkpoint with the right step,
    tokens and world size, every step logged exactly once in order, and the final model written."""
    checkpoints = complete_checkpoints(run_dir)
    assert max(checkpoints, default=None) == max_steps, f"checkpoints {sorted(checkpoints)}\n{output[-3000:]}"
    state = trainer_state(checkpoints[max_steps])
    assert state["step"] == max_steps
    assert state["tokens"] == max_steps * GLOBAL_BATCH_TOKENS
    assert state["world_size"] == world_size
    assert trained_steps(run_dir) == list(range(1, max_steps + 1))
    assert (run_dir / "model.safetensors").is_file()


def require(available: bool, reason: str, how_to_enable: str) -> None:
    """Skip a test whose tool is missing on a developer's machine, but fail it in CI (CI=true or 1), where
    a skipped launch test would hide a broken setup."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} (CI=true: these tests must run)")
    pytest.skip(f"{reason}; to run these tests: {how_to_enable}")
