"""Hugging Face accelerate as an alternative launcher: `accelerate launch --config_file
launch/accelerate.yaml -m dist_llm.train` with 2 CPU processes trains a tiny config to completion."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from launch_support import Launched, assert_finished, launch_env, require, write_tiny_config

pytestmark = pytest.mark.slow


def test_accelerate_launch_trains_with_two_processes(tmp_path: Path) -> None:
    require(importlib.util.find_spec("accelerate") is not None and shutil.which("accelerate") is not None,
            "accelerate is not installed", 'pip install -e ".[accelerate]"')
    config = write_tiny_config(tmp_path, max_steps=4)
    run_dir = tmp_path / "run"
    job = Launched(["accelerate", "launch", "--config_file", "launch/accelerate.yaml", "--num_processes", "2",
                    "-m", "dist_llm.train", "--config", str(config), f"--run.dir={run_dir}"],
                   tmp_path / "accelerate.log", launch_env())
    try:
        code = job.wait(timeout=180)
    finally:
        job.cleanup()
    assert code == 0, job.output()[-4000:]
    assert_finished(run_dir, max_steps=4, world_size=2, output=job.output())
