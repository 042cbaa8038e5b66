"""Shared test helpers: run a function on N ranks of a real gloo process group, with a timeout."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn: Callable[..., Any], rank: int, world_size: int, port: int, out_dir: str,
               args: tuple) -> None:
    # The same variables torchrun sets, so the code under test goes through its normal launch path.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)  # two ranks on a 2-core machine
    result_path = Path(out_dir) / f"rank{rank}.json"
    try:
        result = fn(rank, *args)
        result_path.write_text(json.dumps({"ok": True, "result": result}))
    except BaseException:
        result_path.write_text(json.dumps({"ok": False, "error": traceback.format_exc()}))
        raise


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, out_dir: Path,
              timeout: float = 120) -> list:
    """Call fn(rank, *args) in world_size spawned processes; return each rank's JSON-able result.

    fn must be a module-level function. A hang fails the test after `timeout` seconds instead of
    blocking CI; an exception on any rank fails it with that rank's traceback.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world_size, port, str(out_dir), args))
             for r in range(world_size)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
            if p.is_alive():
                pytest.fail(f"rank process did not finish within {timeout}s (hang?)")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    results = []
    for r in range(world_size):
        path = out_dir / f"rank{r}.json"
        if not path.exists():
            pytest.fail(f"rank {r} exited with code {procs[r].exitcode} and wrote no result")
        data = json.loads(path.read_text())
        if not data["ok"]:
            pytest.fail(f"rank {r} failed:\n{data['error']}")
        results.append(data["result"])
    return results


@pytest.fixture
def ranks(tmp_path: Path) -> Callable[..., list]:
    """`ranks(fn, world_size, *args)` runs fn on a fresh gloo group; see run_ranks."""
    counter = iter(range(1000))

    def run(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120) -> list:
        return run_ranks(fn, world_size, *args, out_dir=tmp_path / f"ranks_{next(counter)}", timeout=timeout)

    return run



@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second intra-op thread, and lose a lot when the cores are busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A corpus and a cache dir shared by all trainer tests, so the tokenizer is trained only once."""
    from trainer_runs import write_tiny_corpus

    root = tmp_path_factory.mktemp("tiny_data")
    return {"corpus": write_tiny_corpus(root / "corpus.txt"), "cache": root / "cache"}


def _train_on_rank(rank: int, argv: list[str]) -> int:
    from dist_llm.train import main

    return main(argv)


@pytest.fixture(scope="session")
def two_rank_run(tiny_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny run (8 steps, LR decaying over 8 steps) on 2 gloo ranks with micro-batch 4;
    shared by the DDP-equivalence and the 2-rank exact-resume tests."""
    from trainer_runs import tiny_train_args

    run_dir = tmp_path_factory.mktemp("two_ranks") / "run"
    args = tiny_train_args(tiny_data, run_dir, "--train.micro_batch_size=4", "--optim.decay_steps=8")
    assert run_ranks(_train_on_rank, 2, args, out_dir=run_dir.parent / "ranks") == [0, 0]
    return run_dir
