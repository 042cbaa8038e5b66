"""python -m dist_llm.generate: loads a run or checkpoint, streams whole characters, stops at end of text."""

import io
import os
import subprocess
import sys

import pytest
import torch
from after_training_runs import END_OF_TEXT, make_checkpoint, make_run, random_model, train_tiny_tokenizer

from dist_llm.generate import decode_stream, main
from dist_llm.model import generate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("gen")
    tokenizer = train_tiny_tokenizer(work)
    model = random_model(tokenizer.vocab_size)
    return make_run(work / "run", tokenizer, model), model, tokenizer


def byte_ids(tokenizer, text):
    """Ids of the single-byte tokens of `text`: every multi-byte character is split across tokens."""
    id_of = {b: i for i, b in tokenizer.vocab.items()}
    return [id_of[bytes([b])] for b in text.encode("utf-8")]


def test_decode_stream_yields_only_complete_characters(run):
    _, _, tokenizer = run
    text = "héllo 東京 🙂 Привет"
    pieces = list(decode_stream(byte_ids(tokenizer, text), tokenizer))
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    assert "🙂" in pieces  # the 4 bytes of the emoji came out together, once complete
    assert len(pieces) == len(text)  # one piece per character: nothing held back longer than needed


def test_decode_stream_replaces_invalid_bytes_like_decode(run):
    _, _, tokenizer = run
    lead_byte_only = byte_ids(tokenizer, "é")[:1]  # a UTF-8 lead byte followed by no continuation byte
    ids = byte_ids(tokenizer, "a") + lead_byte_only + byte_ids(tokenizer, "b")
    assert "".join(decode_stream(ids, tokenizer)) == tokenizer.decode(ids) == "a\ufffdb"
    truncated = byte_ids(tokenizer, "🙂")[:3]  # stream ends mid-character
    assert "".join(decode_stream(truncated, tokenizer)) == tokenizer.decode(truncated)


def test_greedy_output_equals_generate(run, capsys):
    run_dir, model, tokenizer = run
    assert main(["--run", str(run_dir), "--prompt", "The quick", "--max-new-tokens", "12",
                 "--temperature", "0", "--device", "cpu"]) == 0
    expected = generate(model, tokenizer.encode("The quick"), 12, temperature=0.0,
                        eos_id=tokenizer.token_id(END_OF_TEXT))
    captured = capsys.readouterr()
    assert captured.out == "The quick" + tokenizer.decode(expected) + "\n"
    assert "loaded" in captured.err and str(run_dir) in captured.err


def test_seeded_samples_are_reproducible_and_distinct(run, capsys):
    run_dir, model, tokenizer = run
    argv = ["--run", str(run_dir), "--prompt", "Numbers", "--max-new-tokens", "15", "--temperature", "1.0",
            "--top-k", "50", "--top-p", "0.95", "--seed", "7", "--num-samples", "2", "--device", "cpu"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    assert "--- sample 1/2 ---" in first and "--- sample 2/2 ---" in first
    eos = tokenizer.token_id(END_OF_TEXT)
    for i, seed in enumerate((7, 8)):  # sample i uses seed + i
        new = generate(model, tokenizer.encode("Numbers"), 15, temperature=1.0, top_k=50, top_p=0.95,
                       eos_id=eos, seed=seed)
        assert f"--- sample {i + 1}/2 ---\nNumbers{tokenizer.decode(new)}\n" in first


def test_stops_at_end_of_text(tmp_path, capsys):
    """A model rigged to always predict <|endoftext|> prints the prompt and nothing more."""
    tokenizer = train_tiny_tokenizer(tmp_path)
    model = random_model(tokenizer.vocab_size)
    with torch.no_grad():
        for layer in model.layers:  # blocks add nothing: the residual stream is the token embedding
            layer.attn.output_proj.weight.zero_()
            layer.ffn.w2.weight.zero_()
        model.token_embeddings.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.token_id(END_OF_TEXT)] = 1.0
    run_dir = make_run(tmp_path / "run", tokenizer, model)
    assert main(["--run", str(run_dir), "--prompt", "Hi", "--max-new-tokens", "50", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "Hi\n"


class FakeStdin(io.StringIO):
    def __init__(self, text, tty):
        super().__init__(text)
        self.tty = tty

    def isatty(self):
        return self.tty


def test_interactive_mode_reads_prompts_until_eof(run, monkeypatch, capsys):
    run_dir, _, _ = run
    monkeypatch.setattr(sys, "stdin", FakeStdin("The\nfox\n", tty=True))
    assert main(["--run", str(run_dir), "--max-new-tokens", "3", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert "Interactive mode" in captured.err
    assert captured.out.startswith("> The") and "\n> fox" in captured.out


def test_piped_stdin_is_one_prompt(run, monkeypatch, capsys):
    run_dir, model, tokenizer = run
    monkeypatch.setattr(sys, "stdin", FakeStdin("Two\nlines", tty=False))
    assert main(["--run", str(run_dir), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    expected = generate(model, tokenizer.encode("Two\nlines"), 4, temperature=0.0,
                        eos_id=tokenizer.token_id(END_OF_TEXT))
    assert capsys.readouterr().out == "Two\nlines" + tokenizer.decode(expected) + "\n"


def test_checkpoint_and_fallback(tmp_path, capsys):
    tokenizer = train_tiny_tokenizer(tmp_path)
    run_dir = tmp_path / "run"
    tokenizer.save(run_dir / "tokenizer")
    ckpt = make_checkpoint(run_dir, 500, random_model(tokenizer.vocab_size, seed=5))
    model = random_model(tokenizer.vocab_size, seed=5)
    expected = "Hi" + tokenizer.decode(generate(model, tokenizer.encode("Hi"), 5, temperature=0.0,
                                                eos_id=tokenizer.token_id(END_OF_TEXT))) + "\n"
    args = ["--prompt", "Hi", "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu"]
    assert main(["--checkpoint", str(ckpt), *args]) == 0
    assert capsys.readouterr().out == expected
    assert main(["--run", str(run_dir), *args]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected
    assert "no final model.safetensors" in captured.err and str(ckpt) in captured.err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "run directory not found"),
        (lambda d: d.mkdir(), "no final model (model.safetensors) and no complete checkpoint"),
        (lambda d: (d / "checkpoints" / "step_00000010").mkdir(parents=True), "no complete checkpoint"),
    ],
)
def test_unusable_run_directory_is_a_clear_error(tmp_path, capsys, setup, message):
    setup(tmp_path / "run")
    assert main(["--run", str(tmp_path / "run"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "run") in err


def test_incomplete_checkpoint_and_bad_config_are_clear_errors(run, tmp_path, capsys):
    _, model, tokenizer = run
    tokenizer.save(tmp_path / "r" / "tokenizer")
    ckpt = make_checkpoint(tmp_path / "r", 10, model, complete=False)
    assert main(["--checkpoint", str(ckpt), "--prompt", "x"]) == 2
    assert "checkpoint is incomplete (no COMPLETE marker)" in capsys.readouterr().err
    bad_config = make_checkpoint(tmp_path / "r", 20, model, config={"model": {"vocab_size": 10}})
    assert main(["--checkpoint", str(bad_config), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "missing required key" in err
    truncated = make_checkpoint(tmp_path / "r", 30, model)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(["--checkpoint", str(truncated), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "were written" in err


def test_bad_sampling_arguments_are_rejected(run, capsys):
    run_dir, _, _ = run
    for bad in (["--top-p", "1.5"], ["--top-k", "0"], ["--temperature", "-1"], ["--num-samples", "0"]):
        with pytest.raises(SystemExit) as excinfo:
            main(["--run", str(run_dir), "--prompt", "x", *bad])
        assert excinfo.value.code == 2
        assert bad[0] in capsys.readouterr().err


def test_module_entry_point(run):
    run_dir, _, _ = run
    result = subprocess.run(
        [sys.executable, "-m", "dist_llm.generate", "--run", str(run_dir), "--prompt", "Ça va",
         "--max-new-tokens", "5", "--seed", "0", "--device", "cpu"],
        capture_output=True, text=True, encoding="utf-8", timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Ça va") and result.stdout.endswith("\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_unavailable_device_is_a_clear_error(run, capsys):
    run_dir, _, _ = run
    assert main(["--run", str(run_dir), "--prompt", "x", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_prompt_longer_than_the_context_is_a_note_not_a_python_warning(run):
    run_dir, model, tokenizer = run
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    ids = tokenizer.encode(prompt)
    ctx = model.config.context_length
    assert len(ids) > ctx
    # A subprocess: the default warning filters, and what a user sees on the terminal.
    result = subprocess.run(
        [sys.executable, "-m", "dist_llm.generate", "--run", str(run_dir), "--prompt", prompt,
         "--max-new-tokens", "4", "--temperature", "0", "--num-samples", "2", "--device", "cpu"],
        capture_output=True, text=True, encoding="utf-8", timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    note = (f"note: the prompt of {len(ids)} tokens is longer than the model's context of {ctx}; "
            f"generating from its last {ctx} tokens\n")
    assert result.stderr.count(note) == 1  # once per prompt, not per sample
    assert "Warning" not in result.stderr and "_contextlib" not in result.stderr
    expected = tokenizer.decode(generate(model, ids[-ctx:], 4, temperature=0.0,
                                         eos_id=tokenizer.token_id(END_OF_TEXT)))
    assert result.stdout.count(prompt + expected + "\n") == 2


def test_a_missing_device_names_the_flag_not_the_trainer_key(run, capsys):
    run_dir, _, _ = run
    assert main(["--run", str(run_dir), "--prompt", "x", "--device", "cuda:99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device='cuda:99': ") and "dist.device" not in err


def test_truncated_final_model_is_a_clear_error(tmp_path, capsys):
    tokenizer = train_tiny_tokenizer(tmp_path)
    run_dir = make_run(tmp_path / "run", tokenizer, random_model(tokenizer.vocab_size))
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    assert main(["--run", str(run_dir), "--prompt", "x"]) == 2
    assert f"{weights}: not a readable safetensors file" in capsys.readouterr().err
