"""FSDP2 and HSDP training on real gloo process groups: the same optimisation as DDP, exact resume,
resume across strategies, formats and world sizes, faults during sharded checkpoints.

All trainer runs share one configuration: 8 steps of the tiny model with 2-way gradient accumulation
(micro-batch 2 x 2 ranks x 2 = 8 sequences per step), clipping that really clips, checkpoints at 4 and 8.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_ranks
from launch_support import (
    Launched,
    complete_checkpoints,
    launch_env,
    trainer_state,
    worker_pids,
    write_tiny_config,
)
from safetensors.torch import load_file
from trainer_runs import final_weights, read_jsonl, tiny_train_args, train_losses

from dist_llm.checkpoint import CRASH_ENV, checkpoint_format, read_checkpoint
from dist_llm.train import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

COMMON = ("--train.micro_batch_size=2", "--optim.decay_steps=8", "--optim.grad_clip=0.05",
          "--checkpoint.interval=4", "--checkpoint.keep_last=3", "--eval.sample_tokens=0")


def _train_on_rank(rank: int, argv: list[str]) -> int:
    from dist_llm.train import main as train_main

    return train_main(argv)


def _train(tiny_data, run_dir: Path, world_size: int, *extra: str, timeout: float = 300) -> Path:
    args = tiny_train_args(tiny_data, run_dir, *COMMON, *extra)
    if world_size == 1:
        assert main(args) == 0
    else:
        assert run_ranks(_train_on_rank, world_size, args, out_dir=run_dir.parent / f"{run_dir.name}_ranks",
                         timeout=timeout) == [0] * world_size
    return run_dir


def _resume_copy(source: Path, target: Path, step: int) -> tuple[Path, str]:
    """A copy of a finished run dir, to be resumed from its step-`step` checkpoint."""
    shutil.copytree(source, target)
    return target, f"--resume={target / 'checkpoints' / f'step_{step:08d}'}"


def _assert_close(run_a: Path, run_b: Path, rel: float = 1e-5) -> None:
    losses_a, losses_b = train_losses(run_a), train_losses(run_b)
    assert sorted(losses_a) == list(range(1, 9))
    assert losses_a == pytest.approx(losses_b, rel=rel)
    weights_a, weights_b = final_weights(run_a), final_weights(run_b)
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def ddp_run(tiny_data, tmp_path_factory):
    return _train(tiny_data, tmp_path_factory.mktemp("ddp") / "run", 2)


@pytest.fixture(scope="module")
def fsdp_run(tiny_data, tmp_path_factory):
    """Sharded checkpoints written in the background (the exact-resume test reads them back); the
    synchronous path is taken by the hsdp, SIGUSR1 and crash tests."""
    return _train(tiny_data, tmp_path_factory.mktemp("fsdp") / "run", 2, "--dist.strategy=fsdp",
                  "--checkpoint.async_save=true")


def test_fsdp_trains_like_ddp_with_accumulation_and_clipping(ddp_run, fsdp_run):
    norms = [r["grad_norm"] for r in read_jsonl(ddp_run / "metrics.jsonl") if "grad_norm" in r]
    assert min(norms) > 0.05  # the clipping threshold: every step was clipped
    _assert_close(ddp_run, fsdp_run)
    # fsdp writes sharded checkpoints by default: one shard file per rank
    step8 = fsdp_run / "checkpoints" / "step_00000008"
    assert checkpoint_format(step8) == "sharded"
    assert len(list((step8 / "shards").glob("*.safetensors"))) == 2
    assert checkpoint_format(ddp_run / "checkpoints" / "step_00000008") == "full"


def test_hsdp_on_a_two_by_two_mesh_trains_like_ddp(tiny_data, tmp_path, ddp_run):
    run = _train(tiny_data, tmp_path / "run", 4, "--dist.strategy=hsdp", "--dist.shard_group_size=2",
                 "--train.micro_batch_size=1", timeout=400)
    _assert_close(ddp_run, run)


def test_exact_resume_under_fsdp(tiny_data, tmp_path, fsdp_run):
    run, resume = _resume_copy(fsdp_run, tmp_path / "run", 4)
    _train(tiny_data, run, 2, "--dist.strategy=fsdp", resume)
    assert train_losses(run) == train_losses(fsdp_run)  # bit for bit
    for name, tensor in final_weights(fsdp_run).items():
        assert torch.equal(tensor, final_weights(run)[name]), name


def test_resume_ddp_checkpoint_under_fsdp(tiny_data, tmp_path, ddp_run):
    run, resume = _resume_copy(ddp_run, tmp_path / "run", 4)
    _train(tiny_data, run, 2, "--dist.strategy=fsdp", resume)
    _assert_close(ddp_run, run)
    events = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "resume"]
    assert events[-1]["from_step"] == 4


def test_resume_sharded_checkpoint_under_ddp_and_on_one_rank(tiny_data, tmp_path, fsdp_run):
    on_ddp, resume = _resume_copy(fsdp_run, tmp_path / "ddp", 4)
    _train(tiny_data, on_ddp, 2, resume)
    _assert_close(fsdp_run, on_ddp)
    on_one, resume = _resume_copy(fsdp_run, tmp_path / "one", 4)
    _train(tiny_data, on_one, 1, resume, "--train.micro_batch_size=4")
    _assert_close(fsdp_run, on_one)


def test_full_format_and_activation_checkpointing_under_fsdp(tiny_data, tmp_path, fsdp_run):
    run = _train(tiny_data, tmp_path / "run", 2, "--dist.strategy=fsdp", "--checkpoint.format=full",
                 "--train.activation_checkpointing=full")
    assert train_losses(run) == pytest.approx(train_losses(fsdp_run), rel=1e-6)
    full = run / "checkpoints" / "step_00000008"
    assert checkpoint_format(full) == "full"
    # consolidating the sharded checkpoint gives the full one's tensors
    out = tmp_path / "consolidated"
    proc = subprocess.run([sys.executable, "-m", "dist_llm.checkpoint", "consolidate",
                           str(fsdp_run / "checkpoints" / "step_00000008"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    consolidated, reference = load_file(out / "model.safetensors"), load_file(full / "model.safetensors")
    assert consolidated.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(consolidated[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)
    # generate, evaluate and export read the sharded checkpoint directly
    from dist_llm.checkpoint.pretrained import load_pretrained

    model, _, _ = load_pretrained(checkpoint=fsdp_run / "checkpoints" / "step_00000008")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, consolidated[name], rtol=0, atol=0, msg=name)
    # and read_checkpoint reads either format into the same whole optimizer tensors
    sharded_opt = read_checkpoint(fsdp_run / "checkpoints" / "step_00000008").optimizer_state
    full_opt = read_checkpoint(full).optimizer_state
    assert sharded_opt["state"].keys() == full_opt["state"].keys()
    for index, values in full_opt["state"].items():
        for name, tensor in values.items():
            torch.testing.assert_close(sharded_opt["state"][index][name], tensor, rtol=1e-4, atol=1e-6)


def _torchrun(tmp_path: Path, config: Path, run_dir: Path, *extra: str, env: dict | None = None) -> Launched:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dist_llm.train", "--config", str(config), f"--run.dir={run_dir}", "--dist.strategy=fsdp",
           *extra]
    return Launched(cmd, tmp_path / f"torchrun_{len(list(tmp_path.glob('torchrun_*')))}.log",
                    launch_env(**(env or {})))


def test_sigusr1_under_fsdp_leaves_a_complete_sharded_checkpoint(tmp_path):
    config = write_tiny_config(tmp_path, max_steps=100_000)
    run_dir = tmp_path / "run"
    job = _torchrun(tmp_path, config, run_dir)
    try:
        job.wait_until(lambda: (run_dir / "metrics.jsonl").is_file()
                       and '"train_loss"' in (run_dir / "metrics.jsonl").read_text(), 240, "a training step")
        os.kill(worker_pids(job.proc.pid)[1], signal.SIGUSR1)  # one rank: the others stop with it
        assert job.wait(timeout=180) == 0, job.output()[-4000:]
    finally:
        job.cleanup()
    checkpoints = complete_checkpoints(run_dir)
    assert len(checkpoints) == 1, job.output()[-4000:]
    (step, path), = checkpoints.items()
    assert checkpoint_format(path) == "sharded" and trainer_state(path)["step"] == step
    assert "received a stop signal on another rank" in job.output()  # rank 0 reports for rank 1


def test_crash_mid_sharded_write_keeps_the_previous_checkpoint(tmp_path):
    config = write_tiny_config(tmp_path, max_steps=8, checkpoint_interval=4)
    run_dir = tmp_path / "run"
    job = _torchrun(tmp_path, config, run_dir, env={CRASH_ENV: "8"})  # every rank dies after its shards
    try:
        assert job.wait(timeout=240) != 0
    finally:
        job.cleanup()
    assert list(complete_checkpoints(run_dir)) == [4], job.output()[-4000:]
    assert list((run_dir / "checkpoints").glob(".tmp_step_00000008_*"))  # the half-written one
    job = _torchrun(tmp_path, config, run_dir, "--resume=auto")
    try:
        assert job.wait(timeout=240) == 0, job.output()[-4000:]
    finally:
        job.cleanup()
    assert "step_00000004 at step 4" in job.output()
    assert list(complete_checkpoints(run_dir)) == [4, 8]
    assert not list((run_dir / "checkpoints").glob(".tmp_*"))
