"""One trainer per run directory: a second trainer on a held run dir stops at once, before any work, naming
the holder; the first goes on undisturbed; a killed trainer leaves no lock behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from launch_support import Launched, complete_checkpoints, launch_env, trained_steps, write_tiny_config

from dist_llm.training.pipeline import PAUSE_ENV
from dist_llm.training.run_lock import LOCK_FILE, RunLockError, acquire_run_lock


def test_a_held_run_dir_is_refused_naming_the_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run_dir = tmp_path / "run"
    with acquire_run_lock(run_dir):
        info = json.loads((run_dir / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["slurm_job_id"] == "4242" and info["host"]
        with pytest.raises(RunLockError, match=rf"^run dir {run_dir} is in use by another trainer: PID "
                                               rf"{os.getpid()} on .* \(SLURM job 4242\), started .*; stop "
                                               r"it with scancel --signal=USR1 4242"):
            acquire_run_lock(run_dir)  # another open file: flock refuses it as for another process
    with acquire_run_lock(run_dir):  # released: free again
        pass


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "new" / "run"
    run_dir.parent.mkdir()
    with acquire_run_lock(run_dir):
        assert (run_dir / LOCK_FILE).is_file()
    assert not run_dir.exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.jsonl").write_text("")
    with acquire_run_lock(tmp_path / "used"):
        pass
    assert (tmp_path / "used" / "metrics.jsonl").exists()  # a directory it did not create stays


def _start(tmp_path: Path, run_dir: Path, name: str, *extra: str, env: dict[str, str] | None = None,
           max_steps: int = 100_000) -> Launched:
    config = write_tiny_config(tmp_path, max_steps=max_steps, checkpoint_interval=0)
    return Launched([sys.executable, "-m", "dist_llm.train", "--config", str(config), f"--run.dir={run_dir}",
                     *extra], tmp_path / f"{name}.log", env or launch_env())


@pytest.mark.slow
def test_a_second_trainer_fails_fast_and_the_first_goes_on_undisturbed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _start(tmp_path, run_dir, "first")
    try:
        first.wait_until(lambda: len(trained_steps(run_dir)) >= 3, timeout=300, what="three steps")
        config = write_tiny_config(tmp_path, max_steps=100_000)
        second = subprocess.run([sys.executable, "-m", "dist_llm.train", "--config", str(config),
                                 f"--run.dir={run_dir}", "--resume", "auto"],
                                capture_output=True, text=True, timeout=300, env=launch_env())
        assert second.returncode == 1, second.stderr[-2000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(
            f"error: run dir {run_dir} is in use by another trainer: PID {first.proc.pid} on "
            f"{socket.gethostname()}, started "), second.stderr
        assert f"kill -TERM {first.proc.pid}" in errors[0]
        # before any work: no tokenizer, data or model line, and nothing written into the run dir
        assert "tokenizer:" not in second.stdout and "data:" not in second.stdout, second.stdout
        assert not list(run_dir.glob("replaced-*"))
        assert first.proc.poll() is None  # the first trainer is still running
        os.kill(first.proc.pid, signal.SIGUSR1)  # stop it as SLURM would: a checkpoint, exit 0
        assert first.wait(timeout=300) == 0, first.output()[-3000:]
    finally:
        first.cleanup()
    steps = trained_steps(run_dir)
    assert steps == list(range(1, len(steps) + 1))  # every step once, in order: no second writer's lines
    assert max(complete_checkpoints(run_dir)) == steps[-1]


@pytest.mark.slow
def test_a_killed_trainer_leaves_no_lock_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # paused in data preparation: the lock is taken before it, and held
    job = _start(tmp_path, run_dir, "killed", env=launch_env(**{PAUSE_ENV: "120"}))
    try:
        job.wait_until(lambda: "data: pausing" in job.output(), timeout=300, what="data preparation")
        with pytest.raises(RunLockError, match=f"PID {job.proc.pid} "):
            acquire_run_lock(run_dir)
        os.kill(job.proc.pid, signal.SIGKILL)
        job.proc.wait(timeout=60)
    finally:
        job.cleanup()
    with acquire_run_lock(run_dir):  # the OS released it with the process: no stale lock to remove
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_forked_worker_does_not_keep_the_lock(tmp_path: Path) -> None:
    # A pool worker forked while the lock is held, and outliving its trainer, must not hold the run dir.
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # an existing run dir: the lock file stays when released
    lock = acquire_run_lock(run_dir)
    release_r, release_w = os.pipe()
    started_r, started_w = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: says it runs, waits until the parent has released its lock, exits
        os.write(started_w, b"x")
        os.read(release_r, 1)
        os._exit(0)
    try:
        os.read(started_r, 1)  # the worker is running (its fork hooks have run)
        lock.release()
        with acquire_run_lock(run_dir):  # free, although the worker is still alive
            pass
    finally:
        os.write(release_w, b"x")
        os.waitpid(child, 0)
        for fd in (release_r, release_w, started_r, started_w):
            os.close(fd)
