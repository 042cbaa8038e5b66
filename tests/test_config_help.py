"""`python -m dist_llm.train --help` and the config reference: every key has a one-line description, read
from the comment on its line in dist_llm/config/__init__.py, so the help cannot drift from the dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from dist_llm.config import all_keys, parse_args
from dist_llm.config.help import config_reference, field_descriptions
from dist_llm.train import main


def test_every_key_has_a_one_line_description():
    rows = config_reference()
    assert [key for key, *_ in rows] == all_keys()
    missing = [key for key, _, _, description in rows if not description.strip()]
    assert not missing, f"config keys without a description (add a comment on their line): {missing}"
    assert all("\n" not in description for *_, description in rows)
    types = {key: typ for key, typ, _, _ in rows}
    assert (types["optim.max_lr"], types["train.compile"], types["data.inputs"]) == ("float", "bool",
                                                                                     "list[str]")


@dataclass
class _Section:
    described: int = 1  # the comment on its line
    # a comment above a field describes nothing
    bare: str = "x # not a comment"
    listed: list[str] | None = None  # trailing comment after a complex default


def test_descriptions_come_from_trailing_comments_only():
    assert field_descriptions(_Section) == {"described": "the comment on its line",
                                            "listed": "trailing comment after a complex default"}


def test_help_has_examples_a_docs_pointer_and_every_key_with_its_description(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "docs/training.md" in out
    lines = [line[2:] for line in out.splitlines() if line.startswith("  --")]
    assert len(lines) == len(all_keys())
    settings = [line.split("  ")[0].replace("=''", "=") for line in lines]  # '' is what the shell passes
    assert parse_args(settings) == parse_args([])  # the listed defaults parse back to the defaults
    by_key = {setting[2:].split("=")[0]: line for setting, line in zip(settings, lines, strict=True)}
    for key, _, _, description in config_reference():
        assert by_key[key].rstrip().endswith(description)
