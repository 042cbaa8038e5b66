"""python -m dist_llm.evaluate --data FILE.txt|.jsonl ...: text tokenized with the run's tokenizer into a
cache and evaluated whole, the output named after the data."""

from __future__ import annotations

import json

import pytest
from after_training_runs import CORPUS, make_run, random_model, train_tiny_tokenizer

from dist_llm.data.prepare import prepare_corpus
from dist_llm.evaluate import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("eval_text")
    tokenizer = train_tiny_tokenizer(work)
    run = make_run(work / "run", tokenizer, random_model(tokenizer.vocab_size, context_length=16))
    heldout = work / "heldout.txt"
    docs = [CORPUS[i * 90 : (i + 1) * 90] for i in range(6)]
    heldout.write_text("<|endoftext|>".join(docs), encoding="utf-8")
    return run, heldout, tokenizer, work


def test_a_text_file_gives_the_result_of_its_prepared_tokens(setup, tmp_path, capsys):
    run, heldout, tokenizer, _ = setup
    cache = tmp_path / "cache"
    evaluate_heldout = ["--run", str(run), "--data", str(heldout), "--cache-dir", str(cache),
                        "--device", "cpu"]
    assert main(evaluate_heldout) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "eval_heldout.json").read_text())  # named after the data
    assert result["name"] == "heldout" and result["data"] == [str(heldout)] and result["split"] is None
    assert "heldout" in out and "perplexity" in out and "prepared" not in out  # stdout: the table only
    # The same text prepared by hand (all of it in the train split) evaluates the same.
    prepare_corpus([heldout], tokenizer, tmp_path / "prepared", workers=1, val_fraction=0.0, progress=False)
    by_hand = tmp_path / "by_hand.json"
    assert main(["--run", str(run), "--data", str(tmp_path / "prepared"), "--split", "train",
                 "--device", "cpu", "--out", str(by_hand)]) == 0
    expected = json.loads(by_hand.read_text())
    assert expected["name"] == "prepared_train"
    for key in ("windows", "tokens", "bytes", "loss", "bits_per_byte"):
        assert result[key] == expected[key], key
    # A second evaluation reuses the cached tokens.
    capsys.readouterr()
    assert main(evaluate_heldout) == 0
    assert "up to date" in capsys.readouterr().err


def test_several_text_and_jsonl_files_are_evaluated_together(setup, tmp_path):
    run, heldout, _, _ = setup
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"text": CORPUS[i * 80 : (i + 1) * 80]}) + "\n" for i in range(5)),
                     encoding="utf-8")
    one = tmp_path / "one.json"
    assert main(["--run", str(run), "--data", str(heldout), "--cache-dir", str(tmp_path), "--device", "cpu",
                 "--out", str(one)]) == 0
    assert main(["--run", str(run), "--data", str(heldout), str(extra), "--cache-dir", str(tmp_path),
                 "--device", "cpu"]) == 0
    both = json.loads((run / "eval_heldout_and_1_more.json").read_text())
    assert both["tokens"] > json.loads(one.read_text())["tokens"]


def test_text_input_errors_are_one_line(setup, tmp_path, capsys):
    run, heldout, _, _ = setup
    (tmp_path / "notes.md").write_text("x")
    cases = [
        (["--data", str(heldout), "--split", "val"], "--split val: text inputs are evaluated whole"),
        (["--data", str(tmp_path / "notes.md")], "unsupported input type"),
        (["--data", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
    ]
    for argv, message in cases:
        assert main(["--run", str(run), *argv, "--cache-dir", str(tmp_path), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_jsonl_with_another_text_field_evaluates_like_the_plain_text(setup, tmp_path, capsys):
    """--text-field names the JSONL field (or Parquet column): the same documents under "body"
    evaluate exactly as the plain-text file holding them."""
    run, heldout, _, _ = setup
    docs = heldout.read_text(encoding="utf-8").split("<|endoftext|>")
    body = tmp_path / "heldout.jsonl"
    body.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)),
                    encoding="utf-8")
    plain, as_jsonl = tmp_path / "plain.json", tmp_path / "jsonl.json"
    common = ["--run", str(run), "--cache-dir", str(tmp_path / "c"), "--device", "cpu"]
    assert main([*common, "--data", str(heldout), "--out", str(plain)]) == 0
    assert main([*common, "--data", str(body), "--text-field", "body", "--out", str(as_jsonl)]) == 0
    for key in ("tokens", "bytes", "loss"):
        assert json.loads(as_jsonl.read_text())[key] == json.loads(plain.read_text())[key], key
    capsys.readouterr()
    assert main([*common, "--data", str(body), "--out", str(tmp_path / "x.json")]) != 0  # no "text" field
    assert "heldout.jsonl:1" in capsys.readouterr().err
