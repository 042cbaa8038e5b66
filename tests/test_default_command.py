"""The design card's command works as typed: `torchrun --nproc_per_node=N -m dist_llm.train` with the
default config, for any N that divides the global batch (the micro-batch gives way, with a note); a run
dir held by another trainer stops every rank at once, before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from launch_support import launch_env, trained_steps

from dist_llm.config import ConfigError, RunConfig
from dist_llm.training.plan import split_batch
from dist_llm.training.run_lock import acquire_run_lock


@pytest.mark.parametrize("world_size", [1, 2, 4, 8, 16, 32])
def test_the_default_batch_splits_over_any_world_size_that_divides_it(world_size: int) -> None:
    cfg = RunConfig()
    split = split_batch(cfg, world_size)
    seqs = cfg.train.global_batch_tokens // cfg.model.context_length
    assert split.global_batch_seqs == seqs == 32
    assert split.micro_batch_size == min(cfg.train.micro_batch_size, seqs // world_size)
    assert split.micro_batch_size * split.accum_steps * world_size == seqs  # the same global batch
    assert (split.note is None) == (world_size == 1)


def test_a_world_size_that_does_not_divide_the_global_batch_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"\(4096 = 32 sequences of 128 tokens\) is not divisible by the "
                                          r"world size \(3\)"):
        split_batch(RunConfig(), 3)


def _torchrun(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    # The default config (built-in corpus, default model and batch), shortened to two steps
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "dist_llm.train", f"--run.dir={run_dir}", f"--run.cache_dir={tmp_path / 'cache'}",
         "--train.max_steps=2", "--optim.warmup_steps=1", "--log.progress_bar=false", *extra],
        capture_output=True, text=True, timeout=600, env=launch_env(), cwd=tmp_path)


@pytest.mark.slow
def test_torchrun_two_processes_with_the_default_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with acquire_run_lock(run_dir):  # another trainer holds the run dir: every rank stops, before any work
        held = _torchrun(tmp_path, run_dir)
    output = held.stdout + held.stderr
    assert held.returncode != 0
    assert f"error: run dir {run_dir} is in use by another trainer: PID " in output, output[-3000:]
    assert "tokenizer:" not in output and not (tmp_path / "cache").exists()

    done = _torchrun(tmp_path, run_dir)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert ("note: train.micro_batch_size=32 does not fit each rank's share of the global batch "
            "(32 sequences / 2 ranks = 16); using 16 per micro-step") in output
    assert trained_steps(run_dir) == [2]  # log.interval 10: the last step's line only, averaging both
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["tokens"], r["steps"]) for r in records if "train_loss" in r] == [(2 * 4096, 2)]
    assert (run_dir / "model.safetensors").is_file()
