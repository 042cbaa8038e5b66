"""launch/torchrun.sh and launch/multinode.sh with real torchrun processes on CPU (gloo): one node, two
"nodes" meeting at a c10d rendezvous on localhost, and an elastic restart after a worker is killed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from launch_support import (
    REPO,
    Launched,
    assert_finished,
    complete_checkpoints,
    free_port,
    kill_a_worker_after_the_first_checkpoint,
    launch_env,
    trainer_state,
    write_tiny_config,
)

pytestmark = pytest.mark.slow


def test_torchrun_sh_starts_one_process_per_gpu_and_a_fresh_run(tmp_path: Path) -> None:
    import torch

    config = write_tiny_config(tmp_path, max_steps=3)
    run_dir = tmp_path / "run"
    env = launch_env()
    env.pop("NPROC_PER_NODE", None)
    job = Launched(["bash", "launch/torchrun.sh", "--config", str(config), f"--run.dir={run_dir}"],
                   tmp_path / "torchrun.log", env)
    try:
        assert job.wait(timeout=180) == 0, job.output()[-4000:]
    finally:
        job.cleanup()
    # --resume auto is on the command line, and with no checkpoint yet the run starts from step 0.
    assert_finished(run_dir, max_steps=3, world_size=max(1, torch.cuda.device_count()), output=job.output())


def test_two_nodes_meet_at_a_c10d_rendezvous(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, max_steps=4)
    run_dir = tmp_path / "run"
    env = launch_env(NNODES="2", NPROC_PER_NODE="1", RDZV_ENDPOINT=f"localhost:{free_port()}",
                     RDZV_ID=f"test-{os.getpid()}")
    nodes = [Launched(["bash", "launch/multinode.sh", "--config", str(config), f"--run.dir={run_dir}"],
                      tmp_path / f"node{i}.log", env) for i in range(2)]
    try:
        codes = [node.wait(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            node.cleanup()
    outputs = "\n".join(node.output()[-3000:] for node in nodes)
    assert codes == [0, 0], outputs
    assert_finished(run_dir, max_steps=4, world_size=2, output=outputs)
    # One checkpoint writer (rank 0), holding the RNG states gathered from both ranks.
    assert len(trainer_state(complete_checkpoints(run_dir)[4])["rng"]) == 2


def test_elastic_restart_resumes_from_the_newest_checkpoint(tmp_path: Path) -> None:
    max_steps = 160
    config = write_tiny_config(tmp_path, max_steps=max_steps, checkpoint_interval=10)
    run_dir = tmp_path / "run"
    env = launch_env(NPROC_PER_NODE="2", PET_MAX_RESTARTS="1")
    output, killed_after = kill_a_worker_after_the_first_checkpoint(
        ["bash", "launch/torchrun.sh", "--config", str(config), f"--run.dir={run_dir}"], run_dir,
        tmp_path / "torchrun.log", env, max_steps)
    # Two worker groups: the first started fresh, the restarted one resumed from a checkpoint at or
    # after the one that existed when its worker was killed.
    resume_lines = [line for line in output.splitlines() if line.startswith("resume:")]
    assert len(resume_lines) == 2 and "starting from scratch" in resume_lines[0], output[-4000:]
    assert int(resume_lines[1].rsplit("step_", 1)[1][:8]) >= killed_after, resume_lines
    assert not list(run_dir.glob("replaced-*")), "the restarted group started over instead of resuming"
    assert_finished(run_dir, max_steps=max_steps, world_size=2, output=output)


def test_repo_scripts_are_executable() -> None:
    for script in ("launch/torchrun.sh", "launch/multinode.sh", "slurm/pretrain.sh"):
        assert os.access(REPO / script, os.X_OK), script
