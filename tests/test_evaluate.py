"""python -m dist_llm.evaluate: loss, perplexity and bits per byte over every window of a split."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from after_training_runs import CORPUS, make_run, random_model, train_tiny_tokenizer

from dist_llm.data import MemmapTokens
from dist_llm.data.prepare import prepare_corpus
from dist_llm.evaluate import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("eval")
    tokenizer = train_tiny_tokenizer(work)
    model = random_model(tokenizer.vocab_size, context_length=16)
    run = make_run(work / "run", tokenizer, model)
    docs = work / "docs.txt"
    # Whole documents go to val by a hash of their index: 12 short ones give both splits a few windows.
    docs.write_text("<|endoftext|>".join(CORPUS[i * 90 : (i + 1) * 90] for i in range(12)), encoding="utf-8")
    meta = prepare_corpus([docs], tokenizer, work / "data", workers=1, val_fraction=0.4, progress=False)
    assert all(meta["splits"][split]["num_tokens"] > 3 * 17 for split in ("train", "val"))
    return run, work / "data", model, tokenizer


def reference(model, tokenizer, data_dir, split, context_length):
    """Window by window, the plain definitions: mean NLL per token, bits per (non-special) UTF-8 byte."""
    dataset = MemmapTokens(data_dir, split, context_length)
    special = {tokenizer.token_id(s) for s in tokenizer.special_tokens}
    nll, tokens, num_bytes = 0.0, 0, 0
    with torch.no_grad():
        for i in range(len(dataset)):
            x, y = (torch.from_numpy(a)[None] for a in dataset.window(i))
            nll += F.cross_entropy(model(x)[0], y[0], reduction="sum").item()
            tokens += y.numel()
            num_bytes += sum(len(tokenizer.vocab[t]) for t in y[0].tolist() if t not in special)
    return {"windows": len(dataset), "tokens": tokens, "loss": nll / tokens,
            "bits_per_byte": nll / math.log(2) / num_bytes}


@pytest.mark.parametrize("split", ["val", "train"])
def test_matches_window_by_window_reference(setup, tmp_path, capsys, split):
    run, data, model, tokenizer = setup
    out = tmp_path / "eval.json"
    assert main(["--run", str(run), "--data", str(data), "--split", split, "--batch-size", "3",
                 "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = reference(model, tokenizer, data, split, 16)
    assert expected["windows"] > 3  # several batches, the last one partial
    assert (result["windows"], result["tokens"]) == (expected["windows"], expected["tokens"])
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(expected["loss"]), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-5)
    table = capsys.readouterr().out
    assert "perplexity" in table and "bits/byte" in table and f"{result['loss']:.4f}" in table


def test_default_output_is_in_the_run_dir_and_shorter_windows_work(setup, capsys):
    run, data, model, tokenizer = setup
    assert main(["--run", str(run), "--data", str(data), "--context-length", "8", "--device", "cpu"]) == 0
    result = json.loads((run / "eval_data_val.json").read_text())
    assert result["context_length"] == 8
    assert result["loss"] == pytest.approx(reference(model, tokenizer, data, "val", 8)["loss"], rel=1e-5)


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_single_process_result(setup, tmp_path):
    run, data, model, tokenizer = setup
    out = tmp_path / "eval2.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "dist_llm.evaluate", "--run-dir", str(run), "--data", str(data), "--batch-size", "2",
         "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    both = json.loads(out.read_text())
    expected = reference(model, tokenizer, data, "val", 16)
    assert both["world_size"] == 2
    # Each window counted exactly once across the ranks (an odd count cannot split evenly).
    assert (both["windows"], both["tokens"]) == (expected["windows"], expected["tokens"])
    assert both["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert both["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-5)
    assert result.stdout.count("perplexity") == 1  # only rank 0 prints the table


def test_bad_inputs_are_clear_errors(setup, tmp_path, capsys):
    run, data, _, _ = setup
    cases = [
        (["--run", str(tmp_path / "nope"), "--data", str(data)], "run directory not found"),
        (["--run", str(run), "--data", str(tmp_path)], "meta.json not found"),
        (["--run", str(run), "--data", str(data), "--split", "test"], "has no split 'test'"),
        (["--run", str(run), "--data", str(data), "--context-length", "17"], "--context-length 17 must be"),
        # 0 is refused like 17, not taken for "the default"
        (["--run", str(run), "--data", str(data), "--context-length", "0"], "--context-length 0 must be in"),
    ]
    for argv, message in cases:
        assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "x.json")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_missing_device_names_the_flag_not_the_trainer_key(setup, tmp_path, capsys):
    run, data, _, _ = setup
    assert main(["--run", str(run), "--data", str(data), "--device", "cuda:99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device='cuda:99': ") and "dist.device" not in err


def test_data_from_another_tokenizer_is_refused(setup, tmp_path, capsys):
    run, data, _, _ = setup
    other = train_tiny_tokenizer(tmp_path, vocab_size=300)
    docs = tmp_path / "d.txt"
    docs.write_text(CORPUS, encoding="utf-8")
    prepare_corpus([docs], other, tmp_path / "data", workers=1, val_fraction=0.3, progress=False)
    assert main(["--run", str(run), "--data", str(tmp_path / "data"), "--device", "cpu"]) == 2
    assert "was prepared with tokenizer" in capsys.readouterr().err
