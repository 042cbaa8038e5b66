"""Training on a weighted mixture: per-source validation metrics, progress lines and plot curves; exact
resume on 1 and 2 ranks, and a 2-rank checkpoint resumed on 1 rank continuing the same blended stream."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch
from trainer_runs import final_weights, read_jsonl, tiny_train_args, train_losses, write_tiny_corpus

from dist_llm.train import main

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULE = "--optim.decay_steps=8"  # the same LR schedule whether the run stops at step 4 or 8


@pytest.fixture(scope="module")
def mix_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix_data")
    (root / "b").mkdir()
    write_tiny_corpus(root / "a.txt", num_docs=400, seed=0)
    write_tiny_corpus(root / "b" / "part1.txt", num_docs=120, seed=1)
    write_tiny_corpus(root / "b" / "part2.txt", num_docs=120, seed=2)
    sources = (f'[{{name = "a", inputs = ["{root / "a.txt"}"], weight = 3}}, '
               f'{{name = "b", inputs = ["{root / "b"}"], weight = 1, val_fraction = 0.15}}]')
    return {"corpus": root / "a.txt", "cache": root / "cache", "sources": sources}


def mix_args(mix_data, run_dir, *extra):
    args = [a for a in tiny_train_args(mix_data, run_dir, SCHEDULE) if not a.startswith("--data.inputs")]
    return [*args, f"--data.sources={mix_data['sources']}", *extra]


def _train_on_rank(rank: int, argv: list[str]) -> int:
    return main(argv)


def _state(run_dir, step):
    return json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())


def _evals(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]


@pytest.fixture(scope="module")
def straight_run(mix_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mix_straight") / "run"
    assert main(mix_args(mix_data, run_dir)) == 0
    return run_dir


def test_per_source_validation_metrics_and_weighted_mean(straight_run):
    evals = _evals(straight_run)
    assert [r["step"] for r in evals] == [0, 4, 8]
    for r in evals:
        for name in ("a", "b"):
            assert r[f"val_loss/{name}"] > 0 and r[f"val_bpb/{name}"] > 0
        assert r["val_loss"] == pytest.approx(0.75 * r["val_loss/a"] + 0.25 * r["val_loss/b"], rel=1e-12)
        assert r["val_bpb"] == pytest.approx(0.75 * r["val_bpb/a"] + 0.25 * r["val_bpb/b"], rel=1e-12)
        assert r["val_loss/a"] != r["val_loss/b"]  # two different validation sets
    assert evals[-1]["val_loss/b"] < evals[0]["val_loss/b"]  # it learned
    config = json.loads((straight_run / "config.json").read_text())
    assert [s["name"] for s in config["data"]["sources"]] == ["a", "b"]


def test_plot_draws_each_source(straight_run, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from dist_llm import plot

    drawn, real_savefig = [], Figure.savefig

    def savefig(fig, *args, **kwargs):  # keep the figure, to read its curves
        drawn.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    plot.plot_runs([straight_run], tmp_path / "loss.png")
    labels = [line.get_label() for line in drawn[0].axes[0].lines]
    assert labels == ["run train", "run val", "run val a", "run val b"]
    x, y = drawn[0].axes[0].lines[3].get_data()
    assert list(y) == [r["val_loss/b"] for r in _evals(straight_run)]


def test_exact_resume_single_process(mix_data, straight_run, tmp_path, capsys):
    run_dir = tmp_path / "split"
    assert main(mix_args(mix_data, run_dir, "--train.max_steps=4")) == 0
    out = capsys.readouterr().out
    assert "in 2 sources: a (" in out and "75% of windows" in out
    assert "|  a: loss " in out and "  b: loss " in out  # the progress line has each source
    assert main(mix_args(mix_data, run_dir, "--resume=auto")) == 0
    assert "continuing from" in capsys.readouterr().out
    assert train_losses(run_dir) == train_losses(straight_run)  # exactly, at every step
    for name, tensor in final_weights(straight_run).items():
        assert torch.equal(tensor, final_weights(run_dir)[name]), name
    state = _state(run_dir, 8)["loader"]
    assert state == _state(straight_run, 8)["loader"]
    assert state["position"] == 64 and [s["name"] for s in state["sources"]] == ["a", "b"]
    assert [s["epoch"] * s["num_windows"] + s["position"] for s in state["sources"]] == [48, 16]


def test_resume_refuses_changed_weights(mix_data, straight_run, tmp_path, capsys):
    run_dir = tmp_path / "changed"
    shutil.copytree(straight_run, run_dir)
    changed = mix_data["sources"].replace("weight = 3", "weight = 2")
    assert main(mix_args({**mix_data, "sources": changed}, run_dir, "--resume=auto",
                         "--train.max_steps=9")) == 1
    assert "the training data differs from the data the run was trained on (data.sources a x3, b x1, " \
        "data.on_exhausted repeat)" in capsys.readouterr().err


@pytest.mark.slow
def test_exact_resume_two_ranks_and_onto_one(mix_data, straight_run, tmp_path, ranks):
    full, split, shrunk = tmp_path / "full", tmp_path / "split", tmp_path / "shrunk"
    assert ranks(_train_on_rank, 2, mix_args(mix_data, full)) == [0, 0]
    assert ranks(_train_on_rank, 2, mix_args(mix_data, split, "--train.max_steps=4")) == [0, 0]
    shutil.copytree(split, shrunk)
    assert ranks(_train_on_rank, 2, mix_args(mix_data, split, "--resume=auto")) == [0, 0]
    assert train_losses(split) == train_losses(full)  # exactly
    for name, tensor in final_weights(full).items():
        assert torch.equal(tensor, final_weights(split)[name]), name
    assert _evals(split)[-1] == {**_evals(full)[-1], "time_s": _evals(split)[-1]["time_s"]}

    assert main(mix_args(mix_data, shrunk, "--resume=auto")) == 0
    # Same blended stream position and global batch: the 1-rank steps 5-8 match the 2-rank run (up to
    # reduction order) and end at the same place of every source.
    assert train_losses(shrunk) == pytest.approx(train_losses(full), rel=1e-5)
    assert _state(shrunk, 8)["loader"] == _state(full, 8)["loader"] == _state(straight_run, 8)["loader"]


class CountingModel(torch.nn.Module):
    """Uniform logits; counts its forward passes (each a parameter gather under fsdp)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size, self.calls = vocab_size, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.zeros(*x.shape, self.vocab_size)


def test_mixture_validation_runs_every_rank_in_lockstep_per_source():
    """Under fsdp every rank must run as many forward passes as the busiest: per source, since each
    source's windows are split between ranks on their own."""
    from test_data_mixture import FakeSplit

    from dist_llm.data import MixtureTokens
    from dist_llm.tokenizer import Tokenizer
    from dist_llm.training.evaluation import validation_windows

    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    val = MixtureTokens({"a": FakeSplit(5, 0), "b": FakeSplit(3, 100)}, {"a": 1.0, "b": 1.0})
    calls = []
    for rank in (0, 1):
        windows = validation_windows(val, 5, rank, 2, tokenizer, 257)
        model = CountingModel(257)
        result = windows.evaluate(model, 2, torch.device("cpu"), contextlib.nullcontext(), lockstep=True)
        calls.append(model.calls)
        assert result["val_loss/a"] == pytest.approx(np.log(257)) == result["val_loss"]
    assert calls[0] == calls[1] == 3  # a: 3 windows vs 2 -> 2 batches each; b: 2 vs 1 -> 1 batch each
