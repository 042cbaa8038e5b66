"""[[data.sources]]: TOML arrays of tables, the command-line inline form, and errors that name the key."""

from __future__ import annotations

import pytest

from dist_llm.config import ConfigError, RunConfig, SourceSection, load_config, parse_args

MIXTURE_TOML = """
[data]
on_exhausted = "stop"

[[data.sources]]
name = "web"
inputs = ["web/*.jsonl", "more/"]
weight = 3

[[data.sources]]
name = "code"
inputs = ["code.txt"]
weight = 1
val_fraction = 0.05
"""


def test_toml_array_of_tables(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text(MIXTURE_TOML)
    cfg = load_config(path)
    assert cfg.data.sources == [SourceSection("web", ["web/*.jsonl", "more/"], 3.0, 0.0),
                                SourceSection("code", ["code.txt"], 1.0, 0.05)]
    assert cfg.data.on_exhausted == "stop"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # config.json of a run round-trips


@pytest.mark.parametrize("text", [
    '[{name = "web", inputs = ["w.txt"], weight = 3}, {name = "code", inputs = ["c.txt"]}]',  # TOML
    '[{"name": "web", "inputs": ["w.txt"], "weight": 3}, {"name": "code", "inputs": ["c.txt"]}]',  # JSON
])
def test_command_line_takes_the_whole_list_inline(text):
    for argv in (["--data.sources=" + text], ["--data.sources", text]):
        sources = parse_args(argv).data.sources
        assert [(s.name, s.inputs, s.weight) for s in sources] == [("web", ["w.txt"], 3.0),
                                                                   ("code", ["c.txt"], 1.0)]


BAD = [
    (['--data.sources=[{name = "a", inputs = ["x"]}, {name = "a", inputs = ["y"]}]'],
     r"'data.sources\[1\].name' 'a' is already the name of another source"),
    (['--data.sources=[{name = "a", inputs = ["x"], weight = 0}]'],
     r"'data.sources\[0\].weight' \(source 'a'\) must be a positive number, got 0.0"),
    (['--data.sources=[{name = "a", inputs = ["x"], weight = -1}]'], r"'data.sources\[0\].weight'"),
    (['--data.sources=[{name = "a", inputs = ["x"]}]', "--data.inputs=x.txt"],
     r"'data.sources' and data.inputs are both set"),
    (['--data.sources=[{name = "a", inputs = []}]'], r"'data.sources\[0\].inputs' \(source 'a'\) must list"),
    (['--data.sources=[{inputs = ["x"]}]'], r"'data.sources\[0\].name' must be letters"),
    (['--data.sources=[{name = "a/b", inputs = ["x"]}]'], r"'data.sources\[0\].name' must be letters"),
    (['--data.sources=[{name = "a", inputs = ["x"], wieght = 2}]'],
     r"unknown key 'data.sources\[0\].wieght'; did you mean 'weight'"),
    (['--data.sources=[{name = "a", inputs = "x"}]'],
     r"'data.sources\[0\].inputs' expects a list of strings"),
    (['--data.sources=[{name = "a", inputs = ["x"], val_fraction = 1.5}]'],
     r"'data.sources\[0\].val_fraction' \(source 'a'\) must be in \(0, 1\)"),
    (["--data.sources=web.txt"], r"'data.sources' expects a list of tables.*TOML inline tables.*JSON"),
    (["--data.sources.web.weight=2"], r"'data.sources.web.weight': a source's keys cannot be set one by one"),
    (["--data.on_exhausted=wrap"], r"'data.on_exhausted' must be one of repeat, stop"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_sources_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_bad_source_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text(MIXTURE_TOML.replace("weight = 1\n", "weigth = 1\n"))
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'data.sources\[1\].weigth'"):
        load_config(path)
    path.write_text('[data]\nsources = ["web.txt"]\n')
    with pytest.raises(ConfigError, match=r"'data.sources' expects a list of tables"):
        load_config(path)


def test_tokenizer_sample_takes_each_source_by_weight(tmp_path):
    """With tokenizer.train_max_bytes, a 3:1 mixture's BPE sample is 3/4 the first source's text."""
    from dist_llm.training.pipeline import _mixture_sample

    big = tmp_path / "big.txt"
    big.write_text("aaaa aaaa\n" * 1000)
    small = [tmp_path / "s1.txt", tmp_path / "s2.txt"]
    for path in small:
        path.write_text("bbbb bbbb\n" * 1000)
    sample = _mixture_sample([[big], small], [3.0, 1.0], 2000, tmp_path)
    sizes = [p.stat().st_size for p in sample]
    assert [p.name for p in sample] == ["training_sample_0.txt", "training_sample_1.txt"]
    assert sizes == [1500, 500] and set(sample[1].read_text().split()) == {"bbbb"}
    assert _mixture_sample([[big], small], [3.0, 1.0], 0, tmp_path) == [big, *small]  # no limit: all
