"""The optimisation does not depend on how the global batch is split: ranks x micro-batches x accumulation."""

from __future__ import annotations

import pytest
import torch
from trainer_runs import final_weights, tiny_train_args, train_losses

from dist_llm.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_same_training(run_a, run_b):
    losses_a, losses_b = train_losses(run_a), train_losses(run_b)
    assert sorted(losses_a) == list(range(1, 9))
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    weights_a, weights_b = final_weights(run_a), final_weights(run_b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def one_big_batch(tiny_data, tmp_path_factory):
    """1 rank, micro-batch 8 = the whole global batch of 8 x 32 tokens: no accumulation."""
    run_dir = tmp_path_factory.mktemp("big_batch")
    assert main(tiny_train_args(tiny_data, run_dir, "--train.micro_batch_size=8")) == 0
    return run_dir


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_rank_with_twice_the_batch(two_rank_run, one_big_batch):
    # two_rank_run: 2 ranks x micro-batch 4; one_big_batch: 1 rank x micro-batch 8; same global batch
    _assert_same_training(one_big_batch, two_rank_run)


def test_accumulation_of_four_micro_batches_equals_one_batch(tiny_data, tmp_path, one_big_batch):
    run_dir = tmp_path / "accum"
    assert main(tiny_train_args(tiny_data, run_dir, "--train.micro_batch_size=2")) == 0  # 4 micro-steps
    _assert_same_training(one_big_batch, run_dir)


def test_global_batch_not_divisible_by_ranks_names_the_values(tiny_data, tmp_path, capsys):
    assert main(tiny_train_args(tiny_data, tmp_path / "r", "--train.micro_batch_size=8",
                                "--train.global_batch_tokens=768")) == 0  # 3 x 8 sequences: fine on 1 rank
    from dist_llm.config import ConfigError, parse_args
    from dist_llm.training.plan import make_plan

    cfg = parse_args(tiny_train_args(tiny_data, tmp_path / "r", "--train.global_batch_tokens=768"))
    # 6 sequences per rank: the configured micro-batch of 4 gives way to 3, with a note
    plan = make_plan(cfg, world_size=4, train_windows=10_000)
    assert (plan.micro_batch_size, plan.accum_steps, plan.global_batch_seqs) == (3, 2, 24)
    from dist_llm.training.plan import split_batch

    assert "micro_batch_size=4 does not fit each rank's share" in split_batch(cfg, 4).note
    assert split_batch(cfg, 2).note is None
    with pytest.raises(ConfigError, match=r"24 sequences of 32 tokens\) is not divisible by the world size "
                                          r"\(5\).*multiple of 5 x 32 tokens$"):
        make_plan(cfg, world_size=5, train_windows=10_000)  # no micro-batch splits 24 over 5 ranks
    plan = make_plan(cfg, world_size=2, train_windows=10_000)
    assert (plan.accum_steps, plan.global_batch_seqs) == (3, 24)


def test_projects_adamw_trains_like_torchs(tiny_data, tmp_path, one_big_batch):
    run_dir = tmp_path / "own_adamw"
    args = tiny_train_args(tiny_data, run_dir, "--train.micro_batch_size=8", "--optim.impl=dist_llm")
    assert main(args) == 0
    _assert_same_training(one_big_batch, run_dir)


def test_bf16_autocast_on_cpu_keeps_fp32_master_weights(tiny_data, tmp_path, one_big_batch):
    run_dir = tmp_path / "bf16"
    args = tiny_train_args(tiny_data, run_dir, "--train.micro_batch_size=8", "--train.precision=bf16")
    assert main(args) == 0
    weights = final_weights(run_dir)
    assert all(t.dtype == torch.float32 for t in weights.values())
    from safetensors.torch import load_file

    optimizer_state = load_file(run_dir / "checkpoints" / "step_00000008" / "optimizer.safetensors")
    assert all(t.dtype == torch.float32 for t in optimizer_state.values())
    bf16_losses, fp32_losses = train_losses(run_dir), train_losses(one_big_batch)
    assert bf16_losses != fp32_losses  # autocast really ran the matmuls in bf16...
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.02)  # ...and trained the same way
