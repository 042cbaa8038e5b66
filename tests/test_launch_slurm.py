"""slurm/pretrain.sh on a real SLURM cluster: a job that trains to completion, and a job that gets its
time-limit warning signal mid-run, checkpoints, requeues itself and resumes to completion.

CI starts a one-node cluster on the machine (.ci/run calls .ci/slurm_up.sh); elsewhere these tests are
skipped unless a cluster answers (`sudo bash .ci/slurm_up.sh` starts the same one).
The jobs override the script's GPU defaults on the sbatch command line, as a user would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_support import Launched, assert_finished, launch_env, require, trained_steps, write_tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE")
CPU_JOB = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10",
           "--job-name=dist_llm_test"]


def _cluster_answers() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in ping.stdout


@pytest.fixture(autouse=True)
def _slurm_cluster() -> None:
    require(_cluster_answers(), "no SLURM cluster answers (sbatch/scontrol missing or slurmctld down)",
            "sudo bash .ci/slurm_up.sh (and sudo bash .ci/slurm_down.sh afterwards)")


class Job:
    """slurm/pretrain.sh submitted with `sbatch --wait` under a timeout (or without --wait, for a test
    that watches the job's states itself); the job is cancelled if the test ends early."""

    def __init__(self, tmp_path: Path, config: Path, run_dir: Path, *, wait: bool = True, **env: str) -> None:
        self.tmp_path = tmp_path
        cmd = ["timeout", "300", "sbatch", *(["--wait"] if wait else []), "--parsable", *CPU_JOB,
               f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%j.out", "slurm/pretrain.sh",
               "--config", str(config), f"--run.dir={run_dir}"]
        self.sbatch = Launched(cmd, tmp_path / "sbatch.log", launch_env(NPROC_PER_NODE="2", **env))
        self.sbatch.wait_until(lambda: self.sbatch.output().strip(), timeout=60, what="job id from sbatch")
        self.id = self.sbatch.output().split()[0].split(";")[0]

    def output(self) -> str:
        path = self.tmp_path / f"slurm-{self.id}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def state(self) -> dict[str, str]:
        shown = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True, text=True,
                               timeout=30).stdout
        return dict(field.split("=", 1) for field in shown.split() if "=" in field)

    def wait(self, timeout: float) -> int:
        """sbatch --wait's exit code: the job's."""
        code = self.sbatch.wait(timeout)
        assert code != 124, f"sbatch --wait timed out; job output:\n{self.output()[-4000:]}"
        return code

    def wait_until(self, condition: Callable[[dict[str, str]], bool], timeout: float, what: str, *,
                   fail_if_ended: bool = True) -> dict[str, str]:
        """Poll scontrol until condition(job state) holds; fail after `timeout` s, or if the job ends
        first (unless fail_if_ended is False: a job being requeued passes through CANCELLED)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.state()
            if condition(now):
                return now
            if (fail_if_ended and now.get("JobState") in FINAL_STATES) or time.monotonic() > deadline:
                pytest.fail(f"job {self.id}: no {what} within {timeout} s; now {now.get('JobState')} after "
                            f"{now.get('Restarts')} requeue(s); output:\n{self.output()[-4000:]}")
            time.sleep(0.5)

    def cancel(self) -> None:
        if self.state().get("JobState") in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"):
            subprocess.run(["scancel", "--full", self.id], timeout=30)
        self.sbatch.cleanup()


def test_sbatch_trains_to_completion(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, max_steps=6)
    run_dir = tmp_path / "run"
    job = Job(tmp_path, config, run_dir)
    try:
        code = job.wait(timeout=300)
    finally:
        job.cancel()
    output = job.output()
    assert code == 0, output[-4000:]
    assert f"dist_llm job {job.id} (requeued 0 times): 1 node(s)" in output
    assert "2 rank(s)" in output  # NPROC_PER_NODE=2 reached torchrun through the job's environment
    assert_finished(run_dir, max_steps=6, world_size=2, output=output)


def _signal_mid_run(job: Job, run_dir: Path) -> None:
    """What SLURM does at `--signal=B:USR1@120`: SIGUSR1 to the batch shell only, once training runs."""
    job.wait_until(lambda _: bool(trained_steps(run_dir)), timeout=180, what="first training step")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job.id], check=True, timeout=30)


def _stopped_at(output: str) -> int:
    stops = re.findall(r"stopping after step (\d+)", output)
    assert len(stops) == 1, f"expected one stop on the signal:\n{output[-4000:]}"
    return int(stops[0])


def test_time_limit_signal_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    max_steps = 200
    config = write_tiny_config(tmp_path, max_steps=max_steps)
    run_dir = tmp_path / "run"
    job = Job(tmp_path, config, run_dir, wait=False)
    try:
        _signal_mid_run(job, run_dir)
        job.wait_until(lambda s: (s.get("JobState"), s.get("Restarts")) == ("PENDING", "1"), timeout=120,
                       what="requeue", fail_if_ended=False)
        # SLURM holds a requeued batch job back for two minutes (Reason=BeginTime); let it start sooner,
        # but not within the second its old credential was revoked: slurmd would refuse that launch.
        subprocess.run(["scontrol", "update", f"JobId={job.id}", "StartTime=now+3"], check=True, timeout=30)
        final = job.wait_until(lambda s: s.get("Restarts") == "1" and s.get("JobState") in FINAL_STATES,
                               timeout=300, what="end of the requeued run")
    finally:
        job.cancel()
    output = job.output()
    assert (final["JobState"], final["ExitCode"]) == ("COMPLETED", "0:0"), output[-4000:]
    stopped = _stopped_at(output)
    assert 0 < stopped < max_steps
    assert "checkpoint written; requeueing" in output
    assert f"dist_llm job {job.id} (requeued 1 times)" in output
    resumed = re.findall(r"resume: continuing from \S*step_0*(\d+)", output)
    assert resumed == [str(stopped)], output[-4000:]
    assert_finished(run_dir, max_steps=max_steps, world_size=2, output=output)


def test_requeue_stops_at_the_limit(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, max_steps=100_000)
    run_dir = tmp_path / "run"
    job = Job(tmp_path, config, run_dir, DIST_LLM_MAX_REQUEUES="0")
    try:
        _signal_mid_run(job, run_dir)
        code = job.wait(timeout=300)
    finally:
        job.cancel()
    output = job.output()
    assert code == 3, output[-4000:]
    assert "not requeued: requeued 0 times already, DIST_LLM_MAX_REQUEUES=0" in output
    stopped = _stopped_at(output)
    assert (run_dir / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").exists()
    assert output.count(f"dist_llm job {job.id} (requeued") == 1  # it ran once, and was not requeued
