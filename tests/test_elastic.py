"""Elastic restarts under plain torchrun (--max-restarts): a setup whose restart would hang is refused at
the first start, with the fix; a restarted worker group resumes from the newest complete checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from launch_support import (
    assert_finished,
    kill_a_worker_after_the_first_checkpoint,
    launch_env,
    write_tiny_config,
)

from dist_llm.config import ConfigError, RunConfig
from dist_llm.parallel.elastic import FRESH_STORE_VAR, check_restartable, resume_after_restart
from dist_llm.parallel.rank_messages import error_line, launch_ranks

RESTARTABLE = {"TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_RESTART_COUNT": "0"}


def test_a_restartable_run_without_a_fresh_rendezvous_store_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=f"--max-restarts=1 needs {FRESH_STORE_VAR}=1") as info:
        check_restartable({**RESTARTABLE, "TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert "\n" not in str(info.value)
    check_restartable({**RESTARTABLE, FRESH_STORE_VAR: "1"})
    check_restartable({**RESTARTABLE, "TORCHELASTIC_USE_AGENT_STORE": "False"})  # torchrun had it set
    check_restartable({"TORCHELASTIC_MAX_RESTARTS": "0"})  # no restarts, nothing to hang
    check_restartable({})  # not under torchrun


def _cfg(tmp_path: Path, resume: str) -> RunConfig:
    cfg = RunConfig()
    cfg.run.dir, cfg.run.resume = str(tmp_path / "run"), resume
    return cfg


@pytest.mark.parametrize("resume", ["", "auto", "some/checkpoint"])
def test_a_restarted_worker_resumes_from_the_newest_checkpoint(tmp_path, resume):
    first = {**RESTARTABLE, FRESH_STORE_VAR: "1"}
    cfg, note = resume_after_restart(_cfg(tmp_path, resume), first)
    assert (cfg.run.resume, note) == (resume, "")  # the first start runs as asked
    restarted = {**first, "TORCHELASTIC_RESTART_COUNT": "1"}
    complete = tmp_path / "run" / "checkpoints" / "step_00000010"
    complete.mkdir(parents=True)
    (complete / "COMPLETE").write_text("{}")
    cfg, note = resume_after_restart(_cfg(tmp_path, resume), restarted)
    assert cfg.run.resume == "auto" and note.startswith("elastic restart 1 of at most 1: resuming from the")


def test_a_restart_before_the_first_checkpoint_keeps_an_explicit_resume_path(tmp_path):
    restarted = {"TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_RESTART_COUNT": "1"}
    assert resume_after_restart(_cfg(tmp_path, "other/step_5"), restarted)[0].run.resume == "other/step_5"
    assert resume_after_restart(_cfg(tmp_path, ""), restarted)[0].run.resume == "auto"  # says "from scratch"


def test_every_rank_reports_its_errors_and_a_config_error_once_per_node():
    node1 = {"RANK": "2", "LOCAL_RANK": "0"}
    assert launch_ranks(node1) == (2, 0)
    assert launch_ranks({"SLURM_PROCID": "3", "SLURM_LOCALID": "1"}) == (3, 1)
    assert launch_ranks({"SLURM_PROCID": "3"}) == (3, 3) and launch_ranks({}) == (0, 0)
    assert error_line(RuntimeError("boom"), {"RANK": "0"}) == "error: boom"
    assert error_line(RuntimeError("boom"), {"RANK": "3", "LOCAL_RANK": "1"}).startswith("error (rank 3 on ")
    assert error_line(ConfigError("bad key"), node1).endswith(": bad key")  # node 1's log shows it too
    assert error_line(ConfigError("bad key"), {"RANK": "3", "LOCAL_RANK": "1"}) is None


def test_the_trainer_refuses_before_any_work(tmp_path, monkeypatch, capsys):
    from dist_llm.train import main

    monkeypatch.delenv(FRESH_STORE_VAR, raising=False)
    for name, value in RESTARTABLE.items():
        monkeypatch.setenv(name, value)
    assert main([f"--run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: torchrun --max-restarts=1 needs {FRESH_STORE_VAR}=1")
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "--max-restarts=1", "-m", "dist_llm.train", *args]


@pytest.mark.slow
def test_plain_torchrun_with_restarts_is_refused_at_the_first_start(tmp_path):
    config = write_tiny_config(tmp_path, max_steps=3)
    env = launch_env()
    env.pop(FRESH_STORE_VAR, None)
    proc = subprocess.run(_torchrun("--config", str(config), f"--run.dir={tmp_path / 'run'}"), env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    # One line per start (the first, and the restart torchrun then tries), from rank 0 only.
    assert errors and set(errors) == {errors[0]} and f"{FRESH_STORE_VAR}=1 torchrun" in errors[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_killed_worker_under_plain_torchrun_resumes_and_completes_the_run(tmp_path):
    max_steps = 120
    config = write_tiny_config(tmp_path, max_steps=max_steps, checkpoint_interval=10)
    run_dir = tmp_path / "run"
    # The documented setting, and no --resume: the restarted group must resume by itself.
    output, killed_after = kill_a_worker_after_the_first_checkpoint(
        _torchrun("--config", str(config), f"--run.dir={run_dir}"), run_dir, tmp_path / "torchrun.log",
        launch_env(**{FRESH_STORE_VAR: "1"}), max_steps)
    assert "elastic restart 1 of at most 1: resuming from the newest complete checkpoint" in output
    resumed = [line for line in output.splitlines() if line.startswith("resume: continuing from")]
    assert len(resumed) == 1 and int(resumed[0].rsplit("step_", 1)[1][:8]) >= killed_after, output[-4000:]
    assert not list(run_dir.glob("replaced-*")), "the restarted group started over instead of resuming"
    assert_finished(run_dir, max_steps=max_steps, world_size=2, output=output)
    assert output.count("rank 1 on ") == 2  # each worker group's rank 1 said it joined
