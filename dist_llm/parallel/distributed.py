"""Process-group setup from the launcher's environment, device choice and a few rank helpers.

Launchers, in order of preference:
  torchrun: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
  srun without torchrun: SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS (the master address is the job's
    first host, the port is derived from the job id so concurrent jobs do not collide);
  nothing: a single process.
Components get rank, world size and device as plain values from `DistContext`; only the trainer
touches this module.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dist_llm.utils.devices import resolve_device


class DistributedError(RuntimeError):
    """The launch environment is inconsistent or the requested device/backend is unavailable."""


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"


def _int_var(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise DistributedError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _first_slurm_host(nodelist: str) -> str:
    """`scontrol show hostnames` expands compressed lists like 'gpu[01-04]'; its first line is the master."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        if "[" not in nodelist:  # a plain 'host1,host2' list needs no expansion
            return nodelist.split(",")[0]
        raise DistributedError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol: {e}") from None
    return out.split()[0]


def read_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Rank layout from torchrun's variables, else SLURM's, else a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=_int_var(env, "RANK"),
            local_rank=_int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            world_size=_int_var(env, "WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int_var(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _int_var(env, "SLURM_NTASKS") > 1:
        addr = env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        if "MASTER_PORT" in env:
            port = _int_var(env, "MASTER_PORT")
        else:  # the same value on every task of a job, and different for jobs sharing a node
            port = 15000 + _int_var(env, "SLURM_JOB_ID") % 20000 if "SLURM_JOB_ID" in env else 29500
        return LaunchEnv(
            rank=_int_var(env, "SLURM_PROCID"),
            local_rank=_int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            world_size=_int_var(env, "SLURM_NTASKS"),
            master_addr=addr,
            master_port=port,
            launcher="slurm",
        )
    return LaunchEnv(0, 0, 1, "127.0.0.1", 29500, "single")


def select_device(requested: str = "auto", local_rank: int = 0, *,
                  option: str = "dist.device") -> torch.device:
    """CUDA (this rank's local GPU) > MPS > CPU for "auto"; an explicit request must be available.

    `option` is what the user set, named in the error: the trainer's config key, or a command's --device.
    """
    name = requested
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{local_rank % torch.cuda.device_count()}"  # this rank's local GPU
    try:
        return resolve_device(name)
    except ValueError as e:
        raise DistributedError(f"{option}={requested!r}: {e}") from None


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None for a single process (no process group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


@contextlib.contextmanager
def distributed_context(device: str = "auto", backend: str = "auto", timeout_s: int = 1800,
                        env: Mapping[str, str] | None = None, *,
                        device_option: str = "dist.device") -> Iterator[DistContext]:
    """Set the device, create the process group if there are several ranks, and always tear it down.

    `device_option` names where `device` came from in errors (see select_device).
    """
    launch = read_launch_env(env)
    if not 0 <= launch.rank < launch.world_size:
        raise DistributedError(f"rank {launch.rank} is outside world size {launch.world_size}")
    dev = select_device(device, launch.local_rank, option=device_option)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before init_process_group, so NCCL binds this rank to its own GPU
    if launch.world_size == 1:
        yield DistContext(0, 0, 1, dev, None)
        return
    chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if chosen == "nccl" and dev.type != "cuda":
        raise DistributedError(f"dist.backend='nccl' needs CUDA devices, but this rank uses {dev}")
    # env:// rather than tcp://: under torchrun it reuses the agent's store instead of binding the port again.
    os.environ["MASTER_ADDR"] = launch.master_addr
    os.environ["MASTER_PORT"] = str(launch.master_port)
    dist.init_process_group(
        backend=chosen, init_method="env://",
        rank=launch.rank, world_size=launch.world_size, timeout=datetime.timedelta(seconds=timeout_s),
        device_id=dev if dev.type == "cuda" else None,
    )
    completed = False
    try:
        yield DistContext(launch.rank, launch.local_rank, launch.world_size, dev, chosen)
        completed = True
    finally:
        _teardown(completed)


def _teardown(completed: bool) -> None:
    """Destroy the process group so that its threads are joined while the interpreter is still whole.

    A rank that exits while another still communicates, or with a group whose C++ threads (gloo's or
    NCCL's workers, held alive by e.g. a DDP reducer) outlive the interpreter, can abort at exit
    ("terminate called without an active exception"). So: on a normal exit every rank first meets the
    others at a barrier (after it, no rank sends anything), then unreachable objects holding the group are
    collected, then the group is destroyed. After an error the barrier is skipped: the other ranks may be
    gone, and waiting for them would turn a clear error into a timeout.
    """
    if completed:
        with contextlib.suppress(RuntimeError):  # a peer died meanwhile: still tear down our side
            dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_main() -> bool:
    return not _active() or dist.get_rank() == 0


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def new_gloo_group() -> Any:
    """A second process group over all ranks, on gloo (CPU tensors), for messages sent from a background
    thread (e.g. an asynchronous checkpoint), which must not mix with the training's own collectives."""
    return dist.new_group(backend="gloo") if _active() else None


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_mean(value: float) -> float:
    """Mean of a Python float over all ranks (the value itself in a single process)."""
    if not _active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a list of floats over all ranks."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank_flags(flags: list[bool]) -> list[bool]:
    """Each flag True on every rank if it is True on any rank, in one all-reduce: how ranks agree to
    stop (or skip) at the same step."""
    if not _active():
        return [bool(f) for f in flags]
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def any_rank(flag: bool) -> bool:
    return any_rank_flags([flag])[0]


def gather_json(obj: Any) -> list[Any] | None:
    """Gather one JSON-able object per rank; rank 0 gets the list (in rank order), others None.

    Sent as UTF-8 JSON bytes rather than with gather_object, so nothing is pickled.
    """
    if not _active():
        return [json.loads(json.dumps(obj))]
    device = _comm_device()
    payload = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    buffers = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(buffers, padded)  # all_gather works on every backend; gather does not on all
    if dist.get_rank() != 0:
        return None
    return [json.loads(bytes(buf[: int(n.item())].cpu().numpy()).decode())
            for buf, n in zip(buffers, sizes, strict=True)]


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able object on every rank (again without pickle)."""
    if not _active():
        return obj
    device = _comm_device()
    data = json.dumps(obj).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.cpu().numpy()).decode())


def on_main_rank(fn: Callable[[], Any]) -> Any:
    """Run fn() on rank 0 only and return its JSON-able result on every rank.

    If fn raises, rank 0 re-raises it and the other ranks raise a DistributedError quoting it, so no rank
    is left waiting in a collective for one that has already failed.
    """
    outcome, failure = None, None
    if is_main():
        try:
            outcome = {"result": fn()}
        except Exception as e:
            failure, outcome = e, {"error": f"{type(e).__name__}: {e}"}
    outcome = broadcast_json(outcome)
    if failure is not None:
        raise failure
    if "error" in outcome:
        raise DistributedError(f"rank 0 failed: {outcome['error']}")
    return outcome["result"]
