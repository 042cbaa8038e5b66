"""generate's input as a user gives it: a run directory passed to --checkpoint is named as such, and piped
stdin loses the one newline that `echo` adds (kept with --keep-newline)."""

import io
import sys

import pytest
from after_training_runs import END_OF_TEXT, make_checkpoint, make_tiny_run

from dist_llm.generate import main
from dist_llm.model import generate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir, model, tokenizer = make_tiny_run(tmp_path_factory.mktemp("gen_input"))
    make_checkpoint(run_dir, 10, model)
    return run_dir, model, tokenizer


class PipedStdin(io.StringIO):
    def isatty(self):
        return False


def _greedy(model, tokenizer, prompt: str) -> str:
    eos = tokenizer.token_id(END_OF_TEXT)
    ids = generate(model, tokenizer.encode(prompt), 4, temperature=0.0, eos_id=eos)
    return prompt + tokenizer.decode(ids) + "\n"


def test_a_run_directory_given_as_checkpoint_names_the_flag_that_takes_it(run, capsys):
    run_dir, _, _ = run
    assert main(["--checkpoint", str(run_dir), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir}: is a run directory, not a checkpoint; pass it with --run ")
    assert "incomplete" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("piped", "flags", "prompt"), [
    ("Once upon\n", [], "Once upon"),  # echo "Once upon" | ...
    ("Once upon\r\n", [], "Once upon"),
    ("Once upon\n\n", [], "Once upon\n"),  # only one newline is dropped
    ("Once upon\n", ["--keep-newline"], "Once upon\n"),
])
def test_piped_stdin_drops_one_trailing_newline(run, monkeypatch, capsys, piped, flags, prompt):
    run_dir, model, tokenizer = run
    monkeypatch.setattr(sys, "stdin", PipedStdin(piped))
    assert main(["--run", str(run_dir), "--max-new-tokens", "4", "--temperature", "0", *flags]) == 0
    assert capsys.readouterr().out == _greedy(model, tokenizer, prompt)
