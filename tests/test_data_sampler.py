"""The global window stream: determinism, disjoint covering shards, exact resume across world sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dist_llm.data import GlobalWindowStream, ShardedBatchLoader


class FakeWindows:
    """A stand-in dataset whose window i is [i, i, ..., i]: batches reveal which windows were taken."""

    def __init__(self, n: int, context_length: int = 4) -> None:
        self.n, self.context_length = n, context_length

    def __len__(self) -> int:
        return self.n

    def windows(self, indices: np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(indices, dtype=np.int64)[:, None], self.context_length + 1, axis=1)


def run_steps(n: int, world_size: int, batch: int, steps: int, seed: int = 0,
              state: dict | None = None) -> tuple[list[list[int]], dict]:
    """Per step, the concatenation over ranks of the window indices; and the final state."""
    loaders = [ShardedBatchLoader(FakeWindows(n), batch, r, world_size, seed) for r in range(world_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    out = []
    for _ in range(steps):
        step = []
        for loader in loaders:
            x, y = loader.next_batch()
            assert x.shape == (batch, 4) and y.shape == (batch, 4)
            step.extend(x[:, 0].tolist())
        out.append(step)
    states = [loader.state_dict() for loader in loaders]
    assert all(s == states[0] for s in states)
    return out, states[0]


def test_permutation_is_deterministic_and_changes_per_epoch():
    a, b = GlobalWindowStream(1000, seed=7), GlobalWindowStream(1000, seed=7)
    assert np.array_equal(a.permutation(0), b.permutation(0))
    assert sorted(a.permutation(0).tolist()) == list(range(1000))
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    assert not np.array_equal(a.permutation(0), GlobalWindowStream(1000, seed=8).permutation(0))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_are_disjoint_equal_and_cover_the_epoch(world_size):
    n, batch = 60, 5  # 60 = 4 steps of 15 with 3 ranks, 6 of 10 with 2, 12 of 5 with 1
    steps = n // (world_size * batch)
    per_rank = {r: [] for r in range(world_size)}
    loaders = [ShardedBatchLoader(FakeWindows(n), batch, r, world_size, seed=1) for r in range(world_size)]
    for _ in range(steps):
        for r, loader in enumerate(loaders):
            per_rank[r].extend(loader.next_batch()[0][:, 0].tolist())
    sizes = {len(v) for v in per_rank.values()}
    assert sizes == {n // world_size}
    everything = [i for r in range(world_size) for i in per_rank[r]]
    assert sorted(everything) == list(range(n))  # disjoint and covering
    assert all(loader.epoch == 1 for loader in loaders)


def test_epoch_tail_is_neither_dropped_nor_padded():
    n = 10
    steps, state = run_steps(n, world_size=2, batch=2, steps=5)  # 20 positions = exactly 2 epochs
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # the second epoch is reshuffled
    assert state == {"epoch": 2, "position": 0, "seed": 0, "num_windows": 10}
    # 3 steps of 4 with n=10: the third step straddles the epoch boundary
    steps3, state3 = run_steps(n, world_size=2, batch=2, steps=3)
    assert [i for s in steps3 for i in s] == flat[:12]
    assert state3["epoch"] == 1 and state3["position"] == 2


def test_global_stream_is_independent_of_world_size_and_batch():
    n = 97
    two_ranks, _ = run_steps(n, world_size=2, batch=3, steps=40)
    one_rank, _ = run_steps(n, world_size=1, batch=6, steps=40)
    three_ranks, _ = run_steps(n, world_size=3, batch=2, steps=40)
    assert two_ranks == one_rank == three_ranks
    one_small, _ = run_steps(n, world_size=1, batch=1, steps=240)
    assert [i for s in one_small for i in s] == [i for s in two_ranks for i in s]


def test_resume_from_two_ranks_on_one_rank_continues_at_next_unseen_window():
    n = 50
    reference, _ = run_steps(n, world_size=2, batch=4, steps=12, seed=5)
    before, state = run_steps(n, world_size=2, batch=4, steps=5, seed=5)
    state = json.loads(json.dumps(state))  # the state goes through a JSON checkpoint
    assert state["position"] == 40 and state["epoch"] == 0
    # resume on 1 rank with micro-batch 4 and 2 accumulation steps: the same global batch of 8
    after, _ = run_steps(n, world_size=1, batch=4, steps=14, seed=999, state=state)
    flat_ref = [i for s in reference for i in s]
    assert [i for s in before for i in s] + [i for s in after for i in s] == flat_ref
    seen_before = {i for s in before for i in s}
    assert not seen_before & set([i for s in after for i in s][:10])  # rest of epoch 0 is unseen


def test_bad_state_is_rejected():
    stream = GlobalWindowStream(10)
    with pytest.raises(ValueError, match="saved for 11 windows.*has 10"):
        stream.load_state_dict({"epoch": 0, "position": 0, "seed": 0, "num_windows": 11})
    with pytest.raises(ValueError, match="missing"):
        stream.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="invalid position"):
        stream.load_state_dict({"epoch": 0, "position": 10, "seed": 0, "num_windows": 10})
