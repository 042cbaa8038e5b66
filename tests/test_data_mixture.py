"""Weighted mixtures: the blend ratio, per-source epochs, exhaustion, and exact resume across world sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dist_llm.config import RunConfig
from dist_llm.data import DataError, MixtureStream, MixtureTokens, ShardedBatchLoader
from dist_llm.training.plan import make_plan


class FakeSplit:
    """A stand-in prepared split whose window i is [i, ..., i] (offset by `base`, to tell sources apart)."""

    def __init__(self, n: int, base: int, context_length: int = 4) -> None:
        self.n, self.base, self.context_length = n, base, context_length
        self.num_tokens = n * context_length + 1
        self.content_fingerprint = f"fake-{n}-{base}"

    def __len__(self) -> int:
        return self.n

    def windows(self, indices: np.ndarray) -> np.ndarray:
        values = np.asarray(indices, dtype=np.int64) + self.base
        return np.repeat(values[:, None], self.context_length + 1, axis=1)


A, B = 10_000, 20_000  # window i of source a reads as A + i, of b as B + i


def mixture(sizes=(500, 200), weights=(3.0, 1.0), on_exhausted="repeat") -> MixtureTokens:
    splits = {"a": FakeSplit(sizes[0], A), "b": FakeSplit(sizes[1], B)}
    return MixtureTokens(splits, dict(zip("ab", weights, strict=True)), on_exhausted)


def draw(data: MixtureTokens, world_size: int, batch: int, steps: int, state: dict | None = None,
         seed: int = 7) -> tuple[list[int], dict]:
    """The windows all ranks read, in stream order (rank 0's micro-batch first), and the final state."""
    loaders = [ShardedBatchLoader(data, batch, r, world_size, seed) for r in range(world_size)]
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint stores it
    out: list[int] = []
    for _ in range(steps):
        for loader in loaders:
            out.extend(loader.next_batch()[0][:, 0].tolist())
    assert all(loader.state_dict() == loaders[0].state_dict() for loader in loaders)
    return out, loaders[0].state_dict()


def test_three_to_one_weights_draw_windows_three_to_one():
    """400 windows from 2 ranks: 300 from a and 100 from b, and at every prefix of the stream each
    source is within one window of its exact share (the blend is an interleaving, not a random draw)."""
    windows, _ = draw(mixture(), world_size=2, batch=5, steps=40)
    from_a = np.cumsum(np.array(windows) < B)
    assert len(windows) == 400 and from_a[-1] == 300
    expected = 0.75 * np.arange(1, 401)
    assert np.abs(from_a - expected).max() < 1.0
    # each source's own windows: distinct (no repeats within its first epoch) and in range
    a = [w - A for w in windows if w < B]
    b = [w - B for w in windows if w >= B]
    assert len(set(a)) == len(a) and min(a) >= 0 and max(a) < 500
    assert len(set(b)) == len(b) and min(b) >= 0 and max(b) < 200


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.7, 0.2, 0.1), (5.0, 3.0, 0.25)])
def test_blend_stays_within_one_window_of_the_weights(weights):
    stream = MixtureStream(["x", "y", "z"], [50, 70, 90], list(weights))
    sources = stream.schedule(2000)
    counts = np.cumsum(np.eye(3)[sources], axis=0)
    shares = np.array(weights) / sum(weights)
    assert np.abs(counts - np.arange(1, 2001)[:, None] * shares).max() < 1.0


def test_an_exhausted_source_repeats_reshuffled():
    """b (200 windows, a quarter of the draws) runs out after 800 windows; it goes on with a new order."""
    windows, state = draw(mixture(), world_size=1, batch=8, steps=150)  # 1200 windows: 300 from b
    b = [w - B for w in windows if w >= B]
    assert len(b) == 300
    assert sorted(b[:200]) == list(range(200))  # its first epoch: every window once
    assert b[200:300] != b[:100]  # a fresh permutation for its second epoch
    assert [s["epoch"] for s in state["sources"]] == [1, 1]  # a: 900 of 500 windows, b: 300 of 200


def test_stop_ends_the_data_before_a_source_repeats():
    data = mixture(sizes=(900, 200), on_exhausted="stop")
    # b's 200 windows are a quarter of 800 (a's 900 would last 1200); a's 602nd window is due at the same
    # time as b's 201st (601.5 / 3 = 200.5 / 1) and, from the lower-numbered source, comes first
    assert data.limit == 802
    assert mixture(on_exhausted="stop").limit == 667  # a's 500 windows are 3/4 of 666.7
    windows, _ = draw(data, world_size=2, batch=4, steps=100)  # exactly 800
    assert sorted(w - B for w in windows if w >= B) == list(range(200))
    loader = ShardedBatchLoader(data, 4, 0, 1, seed=7)
    loader.stream.advance(800)
    with pytest.raises(DataError, match="'b' is exhausted after 802 windows.*on_exhausted"):
        loader.next_batch()


def test_stop_caps_the_run_length():
    cfg = RunConfig()
    cfg.train.global_batch_tokens = 8 * cfg.model.context_length  # 8 windows per step
    cfg.train.micro_batch_size, cfg.train.max_steps = 8, 1000
    messages: list[str] = []
    plan = make_plan(cfg, 1, 700, max_windows=800, say=messages.append)
    assert plan.total_steps == plan.decay_steps == 100
    assert "runs out after 800 windows" in messages[0] and "step 100 instead of 1000" in messages[0]
    assert make_plan(cfg, 1, 700, max_windows=None).total_steps == 1000


@pytest.mark.parametrize("sizes,weights", [((500, 200), (3.0, 1.0)), ((7, 300), (1.0, 2.0)),
                                           ((100, 100), (1.0, 1.0))])
def test_stop_limit_is_where_the_first_source_would_repeat(sizes, weights):
    data = mixture(sizes, weights, "stop")
    stream = MixtureStream(["a", "b"], list(sizes), list(weights))
    sources = stream.schedule(data.limit + 1)
    counts = np.bincount(sources[:-1], minlength=2)
    assert all(counts <= sizes)
    assert counts[sources[-1]] == sizes[sources[-1]]  # the next window would start a second epoch


def test_stream_is_world_size_agnostic_and_resumes_on_another_world_size():
    data = mixture()
    full, _ = draw(data, world_size=1, batch=8, steps=60)
    assert draw(data, world_size=2, batch=4, steps=60)[0] == full
    assert draw(data, world_size=4, batch=2, steps=60)[0] == full
    first, state = draw(data, world_size=2, batch=4, steps=25)  # saved at 2 ranks ...
    assert state["position"] == 200 and sum(s["epoch"] * s["num_windows"] + s["position"]
                                             for s in state["sources"]) == 200
    rest, _ = draw(data, world_size=1, batch=8, steps=35, state=state)  # ... resumed on 1 rank
    assert first + rest == full
    rest, _ = draw(data, world_size=4, batch=2, steps=35, state=state)
    assert first + rest == full


def test_resume_refuses_a_changed_mixture():
    _, state = draw(mixture(), world_size=1, batch=4, steps=3)
    loader = ShardedBatchLoader(mixture(weights=(2.0, 1.0)), 4, 0, 1, seed=7)
    with pytest.raises(ValueError, match="the mixture changed"):
        loader.load_state_dict(state)
    one_source = ShardedBatchLoader(FakeSplit(500, A), 4, 0, 1, seed=7).state_dict()
    with pytest.raises(ValueError, match="cannot continue as a mixture"):
        ShardedBatchLoader(mixture(), 4, 0, 1, seed=7).load_state_dict(one_source)


def test_sources_are_shuffled_independently_and_the_seed_matters():
    equal = mixture(sizes=(300, 300), weights=(1.0, 1.0))
    windows, _ = draw(equal, world_size=1, batch=10, steps=20)
    a = [w - A for w in windows if w < B]
    b = [w - B for w in windows if w >= B]
    assert a != b  # equal sizes, yet different orders
    assert draw(equal, world_size=1, batch=10, steps=20, seed=8)[0] != windows
