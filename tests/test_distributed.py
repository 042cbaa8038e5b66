"""Launch-environment parsing, device choice, and the rank helpers on a real 2-process gloo group."""

from __future__ import annotations

import subprocess

import pytest
import torch

from dist_llm.parallel import distributed
from dist_llm.parallel.distributed import (
    DistributedError,
    distributed_context,
    read_launch_env,
    select_device,
)


def test_torchrun_env_wins_over_slurm():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node7", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    launch = read_launch_env(env)
    assert (launch.rank, launch.local_rank, launch.world_size) == (3, 1, 8)
    assert (launch.master_addr, launch.master_port, launch.launcher) == ("node7", 1234, "torchrun")


def test_slurm_env_derives_master_from_nodelist_and_port_from_job(monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="gpu03\ngpu04\n", stderr="")

    monkeypatch.setattr(distributed.subprocess, "run", fake_run)
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[03-04]"}
    launch = read_launch_env(env)
    assert calls == [["scontrol", "show", "hostnames", "gpu[03-04]"]]
    assert (launch.rank, launch.local_rank, launch.world_size, launch.launcher) == (5, 1, 8, "slurm")
    assert launch.master_addr == "gpu03"
    assert launch.master_port == 15000 + 4242 % 20000
    # an explicit MASTER_ADDR/PORT is respected and scontrol is not needed
    launch = read_launch_env({**env, "MASTER_ADDR": "head", "MASTER_PORT": "999"})
    assert (launch.master_addr, launch.master_port) == ("head", 999)
    assert len(calls) == 1


def test_single_process_without_launcher_and_bad_values():
    assert read_launch_env({}).world_size == 1
    assert read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "single"
    with pytest.raises(DistributedError, match="WORLD_SIZE"):
        read_launch_env({"RANK": "0", "WORLD_SIZE": "two"})


def test_device_choice():
    assert select_device("cpu") == torch.device("cpu")
    mps = torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if mps else "cpu")
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(DistributedError, match="CUDA is not available"):
            select_device("cuda")


def test_a_missing_device_is_named_as_the_user_set_it():
    # cuda:99 exists on no machine, with CUDA or without: the error names the trainer's config key by
    # default and a command's own flag when it says so
    with pytest.raises(DistributedError, match=r"^dist\.device='cuda:99': "):
        select_device("cuda:99")
    with pytest.raises(DistributedError, match=r"^--device='cuda:99': "):
        select_device("cuda:99", option="--device")
    with pytest.raises(DistributedError, match=r"^--device='cuda:99': "), \
            distributed_context(device="cuda:99", env={}, device_option="--device"):
        pass


def test_single_process_context_has_no_group():
    with distributed_context(device="cpu", env={}) as ctx:
        assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)
        assert distributed.all_reduce_mean(2.5) == 2.5
        assert distributed.gather_json({"a": 1}) == [{"a": 1}]
        assert distributed.any_rank(False) is False
    assert not torch.distributed.is_initialized()


def _helpers_on_ranks(rank: int) -> dict:
    with distributed_context(device="cpu") as ctx:
        assert ctx.backend == "gloo" and ctx.world_size == 2
        mean = distributed.all_reduce_mean(float(rank + 1))  # (1 + 2) / 2
        sums = distributed.all_reduce_sum([rank, 10.0])
        gathered = distributed.gather_json({"rank": rank, "text": "é" * (rank + 1)})
        broadcast = distributed.broadcast_json({"from": rank})
        anyone = distributed.any_rank(rank == 1)
        nobody = distributed.any_rank(False)
        built = distributed.on_main_rank(lambda: {"built_by": rank})

        def fail_on_main():
            raise ValueError("disk full")

        try:
            distributed.on_main_rank(fail_on_main)
            failure = None
        except (ValueError, DistributedError) as e:
            failure = f"{type(e).__name__}: {e}"
        distributed.barrier()
        result = {"built": built, "failure": failure, "mean": mean, "sums": sums, "gathered": gathered,
                  "broadcast": broadcast, "any": anyone, "none": nobody, "main": distributed.is_main()}
    result["torn_down"] = not torch.distributed.is_initialized()
    return result


@pytest.mark.slow
def test_rank_helpers_on_two_gloo_ranks(ranks):
    r0, r1 = ranks(_helpers_on_ranks, 2)
    for r in (r0, r1):
        assert r["mean"] == 1.5 and r["sums"] == [1.0, 20.0]
        assert r["broadcast"] == {"from": 0}
        assert r["any"] is True and r["none"] is False
        assert r["torn_down"]
        assert r["built"] == {"built_by": 0}  # run once, on rank 0, result everywhere
    assert r0["failure"] == "ValueError: disk full"  # the original error where it happened...
    assert r1["failure"] == "DistributedError: rank 0 failed: ValueError: disk full"  # ...named on the others
    assert r0["gathered"] == [{"rank": 0, "text": "é"}, {"rank": 1, "text": "éé"}]
    assert r1["gathered"] is None
    assert (r0["main"], r1["main"]) == (True, False)


def _raise_inside_group(rank: int) -> bool:
    try:
        with distributed_context(device="cpu"):
            raise KeyError("boom")
    except KeyError:
        pass
    return torch.distributed.is_initialized()


@pytest.mark.slow
def test_group_is_torn_down_when_the_body_raises(ranks):
    assert ranks(_raise_inside_group, 2) == [False, False]


def _leave_at_different_times(rank: int) -> dict:
    import gc
    import time
    import weakref

    with distributed_context(device="cpu"):
        group = torch.distributed.group.WORLD

        class Holder:  # an object in a reference cycle that keeps the group alive, as DDP's reducer does
            pass

        holder = Holder()
        holder.me, holder.group = holder, group
        alive = weakref.ref(holder)
        del holder
        gc.disable()  # only the teardown may collect the cycle
        if rank == 1:
            time.sleep(1.5)  # still busy while rank 0 is done
        left = time.monotonic()
    gc.enable()
    return {"waited_s": time.monotonic() - left, "cycle_collected": alive() is None}


@pytest.mark.slow
def test_teardown_waits_for_every_rank_and_frees_the_group_first(ranks):
    r0, r1 = ranks(_leave_at_different_times, 2)
    # rank 0 did not destroy its group (and exit) while rank 1 was still inside the context
    assert r0["waited_s"] > 1.0, r0
    assert r0["cycle_collected"] and r1["cycle_collected"]
