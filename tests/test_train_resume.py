"""Exact resume: N steps + resume + N steps logs the same losses as 2N steps, on 1 and 2 ranks;
resuming on a different number of ranks continues at the same point of the data."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_runs import final_weights, tiny_train_args, train_losses

from dist_llm.train import main

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULE = "--optim.decay_steps=8"  # the same LR schedule whether the run stops at step 4 or 8


def _train_on_rank(rank: int, argv: list[str]) -> int:
    from dist_llm.train import main as train_main

    return train_main(argv)


def _state(run_dir, step):
    return json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    assert main(tiny_train_args(tiny_data, run_dir, SCHEDULE)) == 0
    return run_dir


def test_exact_resume_single_process(tiny_data, tmp_path, straight_run, capsys):
    run_dir = tmp_path / "split"
    assert main(tiny_train_args(tiny_data, run_dir, SCHEDULE, "--train.max_steps=4")) == 0
    assert sorted(train_losses(run_dir)) == [1, 2, 3, 4]
    assert main(tiny_train_args(tiny_data, run_dir, SCHEDULE, "--resume=auto")) == 0
    assert "continuing from" in capsys.readouterr().out
    assert train_losses(run_dir) == train_losses(straight_run)  # exactly, at every step
    for name, tensor in final_weights(straight_run).items():
        assert torch.equal(tensor, final_weights(run_dir)[name]), name
    assert _state(run_dir, 8)["loader"] == _state(straight_run, 8)["loader"]


@pytest.mark.slow
def test_exact_resume_two_ranks_and_resume_onto_one(tiny_data, tmp_path, ranks, two_rank_run):
    full, split, shrunk = two_rank_run, tmp_path / "split", tmp_path / "shrunk"
    first_half = tiny_train_args(tiny_data, split, SCHEDULE, "--train.max_steps=4")
    assert ranks(_train_on_rank, 2, first_half) == [0, 0]
    assert len(_state(split, 4)["rng"]) == 2  # both ranks' RNG states were gathered
    # the 2-rank checkpoint at step 4, resumed on 2 ranks and (a copy) on 1 rank
    import shutil

    shutil.copytree(split, shrunk)
    assert ranks(_train_on_rank, 2, tiny_train_args(tiny_data, split, SCHEDULE, "--resume=auto")) == [0, 0]
    assert train_losses(split) == train_losses(full)  # exactly
    for name, tensor in final_weights(full).items():
        assert torch.equal(tensor, final_weights(split)[name]), name

    assert main(tiny_train_args(tiny_data, shrunk, SCHEDULE, "--resume=auto")) == 0
    # Same data position and global batch: steps 5-8 match the 2-rank run up to reduction order.
    assert train_losses(shrunk) == pytest.approx(train_losses(full), rel=1e-5)
    assert _state(shrunk, 8)["loader"] == _state(full, 8)["loader"]
    assert _state(shrunk, 8)["tokens"] == _state(full, 8)["tokens"] == 8 * 256
