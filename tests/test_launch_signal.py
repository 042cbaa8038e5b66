"""The stop signal without any scheduler: SIGUSR1 (what SLURM sends before a job's time runs out) to a
single training process makes it finish its step, write a complete checkpoint and exit 0."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from launch_support import (
    Launched,
    complete_checkpoints,
    launch_env,
    trained_steps,
    trainer_state,
    write_tiny_config,
)

pytestmark = pytest.mark.slow


def test_sigusr1_leaves_a_complete_checkpoint_and_exit_code_zero(tmp_path: Path) -> None:
    max_steps = 100_000  # far more than it will run: only the signal ends this run
    config = write_tiny_config(tmp_path, max_steps=max_steps)
    run_dir = tmp_path / "run"
    job = Launched([sys.executable, "-m", "dist_llm.train", "--config", str(config), f"--run.dir={run_dir}"],
                   tmp_path / "train.log", launch_env())
    try:
        job.wait_until(lambda: trained_steps(run_dir), timeout=180, what="first training step")
        os.kill(job.proc.pid, signal.SIGUSR1)
        code = job.wait(timeout=120)
    finally:
        job.cleanup()
    assert code == 0, job.output()[-4000:]
    checkpoints = complete_checkpoints(run_dir)
    assert len(checkpoints) == 1, f"expected the one checkpoint written on the signal: {sorted(checkpoints)}"
    (step, checkpoint), = checkpoints.items()
    assert 0 < step < max_steps
    assert trainer_state(checkpoint)["step"] == step
    # The checkpoint is the state after the last step the run logged: nothing trained after it.
    assert trained_steps(run_dir)[-1] == step
    assert {"model.safetensors", "optimizer.safetensors", "config.json", "COMPLETE"} <= \
        {p.name for p in checkpoint.iterdir()}
