"""Stop signals that arrive before training starts: the handlers are installed first thing, forked workers
get the previous dispositions back, and the run stops at the first step boundary with a checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from launch_support import Launched, complete_checkpoints, launch_env, trainer_state, write_tiny_config
from trainer_runs import read_jsonl

from dist_llm.training.pipeline import PAUSE_ENV
from dist_llm.training.signals import StopRequest


@pytest.fixture(autouse=True)
def terminal_dispositions() -> Iterator[None]:
    """Each test starts from a terminal's dispositions, whatever this process inherited: a test runner
    started in the background or under nohup has SIGINT ignored (the product keeps it so, on purpose)."""
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _report_dispositions(queue) -> None:
    queue.put([signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)])


def test_forked_workers_get_the_default_handlers_back() -> None:
    ctx = multiprocessing.get_context("fork")
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle  # live in this process
        queue = ctx.Queue()
        child = ctx.Process(target=_report_dispositions, args=(queue,))
        child.start()
        dispositions = queue.get(timeout=60)
        child.join(timeout=60)
    # SIGINT ignored: Ctrl-C reaches every process of the terminal's group, and the parent handles it.
    assert dispositions == [signal.SIG_DFL, signal.SIG_DFL, signal.SIG_IGN]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # and restored here on exit
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_ctrl_c_is_a_stop_request_and_a_second_one_aborts() -> None:
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"  # no KeyboardInterrupt: the loop stops at its next step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_ctrl_c_stays_ignored_where_it_was_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _signalled_during_preparation(tmp_path: Path, send: Callable[[Launched], None], *extra: str,
                                  pause_s: int = 3) -> tuple[int, str, Path]:
    """Start the trainer, call `send(job)` while it prepares data (paused there for pause_s seconds),
    wait for the exit; returns (exit code, output, run dir)."""
    config = write_tiny_config(tmp_path, max_steps=100_000)
    run_dir = tmp_path / "run"
    job = Launched([sys.executable, "-m", "dist_llm.train", "--config", str(config), f"--run.dir={run_dir}",
                    *extra], tmp_path / "train.log", launch_env(**{PAUSE_ENV: str(pause_s)}))
    try:
        job.wait_until(lambda: "data: pausing" in job.output(), timeout=180, what="data preparation")
        send(job)
        code = job.wait(timeout=180)
    finally:
        job.cleanup()
    return code, job.output(), run_dir


@pytest.mark.slow
def test_signal_during_data_preparation_stops_at_the_first_step(tmp_path: Path) -> None:
    # Two preparation workers: a pool started after the handlers, terminated with SIGTERM when done.
    code, output, run_dir = _signalled_during_preparation(
        tmp_path, lambda job: os.kill(job.proc.pid, signal.SIGUSR1), "--data.num_workers=2")
    assert code == 0, output[-4000:]
    assert "stopping after step 1: received SIGUSR1" in output
    checkpoints = complete_checkpoints(run_dir)
    assert list(checkpoints) == [1], output[-4000:]
    assert trainer_state(checkpoints[1])["step"] == 1
    events = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "event" in r]
    assert events == [{"event": "stop_signal", "step": 1, "signal": "SIGUSR1"}]
    assert (run_dir / "loss.png").is_file()  # the plot reads past the event line


@pytest.mark.slow
def test_ctrl_c_stops_with_a_checkpoint_that_generate_can_use(tmp_path: Path) -> None:
    """Ctrl-C keeps the work done (the run stops at the next step, with a checkpoint), and the stopped
    run, which has no final model, is usable by the after-training commands: its tokenizer was saved
    when the run started."""
    code, output, run_dir = _signalled_during_preparation(tmp_path, lambda job: os.kill(job.proc.pid,
                                                                                         signal.SIGINT))
    assert code == 0, output[-4000:]
    assert "Ctrl-C: stopping after this step" in output and "Traceback" not in output
    assert "stopping after step 1: received SIGINT" in output
    assert list(complete_checkpoints(run_dir)) == [1], output[-4000:]
    assert not (run_dir / "model.safetensors").exists()  # stopped early: no final model
    sample = subprocess.run([sys.executable, "-m", "dist_llm.generate", "--run", str(run_dir), "--prompt",
                             "the cat", "--max-new-tokens", "4", "--seed", "0"],
                            capture_output=True, text=True, env=launch_env(), timeout=300)
    assert sample.returncode == 0, sample.stderr[-4000:]
    assert sample.stdout.startswith("the cat"), sample.stdout


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_without_a_traceback(tmp_path: Path) -> None:
    def press_ctrl_c_twice(job: Launched) -> None:
        os.kill(job.proc.pid, signal.SIGINT)
        job.wait_until(lambda: "Ctrl-C: stopping" in job.output(), timeout=60, what="the Ctrl-C note")
        os.kill(job.proc.pid, signal.SIGINT)

    # A long pause: the run could only end with 130 by aborting inside it (after it, Ctrl-C stops at
    # step 1 with exit 0).
    code, output, _ = _signalled_during_preparation(tmp_path, press_ctrl_c_twice, pause_s=60)
    assert code == 130, output[-4000:]
    assert "aborted by Ctrl-C" in output and "Traceback" not in output, output[-4000:]


def test_early_handlers_are_taken_over_by_the_next_stop_request() -> None:
    """catch_stop_signals_early keeps a signal that arrives before main(); the StopRequest entered
    next reports it, and on exit puts back the dispositions that were there before the early ones."""
    import dist_llm.training.signals as signals

    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    signals.catch_stop_signals_early()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process without a handler
        with StopRequest() as stop:
            assert stop.received == "SIGUSR1"
            assert signal.getsignal(signal.SIGUSR1) == stop._handle
            assert not signals._early and len(signals._installed) == 1
    finally:
        while signals._early:  # only if the take-over failed: put the handlers back for other tests
            signals._early.pop().__exit__(None, None, None)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


_PROBE = """
import importlib.abc, runpy, signal, sys
seen = []
class TorchImportProbe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL)
        return None
sys.meta_path.insert(0, TorchImportProbe())
sys.argv = ["dist_llm.train", "--help"]
try:
    runpy.run_module("dist_llm.train", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("handler installed when torch was first imported:", seen)
"""


def test_trainer_installs_stop_handlers_before_importing_torch() -> None:
    """`python -m dist_llm.train` catches SIGUSR1 before `import torch` starts (seconds of imports
    during which a preemption signal used to kill the process)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "handler installed when torch was first imported: [True]" in proc.stdout, proc.stdout


_DOUBLE_CTRL_C_DURING_IMPORTS = """
import importlib.abc, os, runpy, signal, sys
class CtrlCTwiceAtTorchImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlCTwiceAtTorchImport())
sys.argv = ["dist_llm.train"]
runpy.run_module("dist_llm.train", run_name="__main__", alter_sys=True)
print("went on after two Ctrl-C")
"""


def test_a_second_ctrl_c_while_importing_aborts_without_a_traceback() -> None:
    """Before main() (torch takes seconds to import), a second Ctrl-C cannot surface as a
    KeyboardInterrupt: raised inside an import it prints a traceback, or is swallowed."""
    proc = subprocess.run([sys.executable, "-c", _DOUBLE_CTRL_C_DURING_IMPORTS], capture_output=True,
                          text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "aborted by Ctrl-C before training started" in proc.stderr
    assert "Traceback" not in proc.stderr and "went on" not in proc.stdout
