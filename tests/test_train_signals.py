"""Stop signals that arrive before training starts: the handlers are installed first thing, forked workers
get the previous dispositions back, and the run stops at the first step boundary with a checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest
from launch_support import Launched, complete_checkpoints, launch_env, trainer_state, write_tiny_config
from trainer_runs import read_jsonl

from dist_llm.pipeline import PAUSE_ENV
from dist_llm.training.signals import StopRequest


def _report_dispositions(queue) -> None:
    queue.put([signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGUSR1, signal.SIGTERM)])


def test_forked_workers_get_the_default_handlers_back() -> None:
    ctx = multiprocessing.get_context("fork")
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle  # live in this process
        queue = ctx.Queue()
        child = ctx.Process(target=_report_dispositions, args=(queue,))
        child.start()
        dispositions = queue.get(timeout=60)
        child.join(timeout=60)
    assert dispositions == [True, True]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # and restored here on exit


@pytest.mark.slow
def test_signal_during_data_preparation_stops_at_the_first_step(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, max_steps=100_000)
    run_dir = tmp_path / "run"
    # Two preparation workers: a pool started after the handlers, terminated with SIGTERM when done.
    job = Launched([sys.executable, "-m", "dist_llm.train", "--config", str(config), f"--run.dir={run_dir}",
                    "--data.num_workers=2"], tmp_path / "train.log", launch_env(**{PAUSE_ENV: "3"}))
    try:
        job.wait_until(lambda: "data: pausing" in job.output(), timeout=180, what="data preparation")
        os.kill(job.proc.pid, signal.SIGUSR1)
        code = job.wait(timeout=180)
    finally:
        job.cleanup()
    output = job.output()
    assert code == 0, output[-4000:]
    assert "stopping after step 1: received SIGUSR1" in output
    checkpoints = complete_checkpoints(run_dir)
    assert list(checkpoints) == [1], output[-4000:]
    assert trainer_state(checkpoints[1])["step"] == 1
    events = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "event" in r]
    assert events == [{"event": "stop_signal", "step": 1, "signal": "SIGUSR1"}]
    assert (run_dir / "loss.png").is_file()  # the plot reads past the event line
