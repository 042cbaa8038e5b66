"""Config loading: TOML files, dotted overrides, and errors that name the key before any work starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dist_llm.config import ConfigError, RunConfig, load_config, load_toml, parse_args

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_overrides_in_both_forms_and_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[optim]\nmax_lr = 1e-3\nwarmup_steps = 5\n[train]\nmax_steps = 100\n'
                    '[data]\ninputs = ["a.txt"]\n')
    cfg = parse_args(["--config", str(toml), "--optim.max_lr=3e-4", "--train.max_steps", "200",
                      "--train.compile", "--run.dir=runs/exp1", "--resume", "auto",
                      "--data.inputs=x.txt,y.txt", "--model.rope_theta", "500000"])
    assert cfg.optim.max_lr == 3e-4 and cfg.optim.warmup_steps == 5  # file value kept where not overridden
    assert cfg.train.max_steps == 200 and cfg.train.compile is True
    assert cfg.run.dir == "runs/exp1" and cfg.run.resume == "auto"
    assert cfg.data.inputs == ["x.txt", "y.txt"]
    assert cfg.model.rope_theta == 500000.0 and isinstance(cfg.model.rope_theta, float)
    assert parse_args(["--config", str(toml), '--data.inputs=["p q.txt"]']).data.inputs == ["p q.txt"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--optim.lr=1e-3"], "unknown config key 'optim.lr'; did you mean 'optim.min_lr' or 'optim.max_lr'"),
    (["--optimizer.max_lr=1e-3"], "did you mean 'optim.max_lr'"),
    (["--train.max_step=10"], "did you mean 'train.max_steps'"),
    (["--model.d_model=102"], "'model.d_model' (102) must be divisible by model.num_heads (4)"),
    (["--model.d_model=100"], "gives an odd head size 25; RoPE rotates pairs"),
    (["--optim.max_lr=-1"], "'optim.max_lr' must be > 0"),
    (["--optim.warmup_steps=10000"], "'optim.warmup_steps' (10000) must be shorter than the run"),
    (["--train.max_steps=ten"], "'train.max_steps' expects an integer, got 'ten'"),
    (["--train.max_steps=2.5"], "'train.max_steps' expects an integer"),
    (["--train.compile=maybe"], "'train.compile' expects a boolean"),
    (["--train.precision=fp8"], "'train.precision' must be one of fp32, bf16, fp16"),
    (["--train.global_batch_tokens=1000"], "'train.global_batch_tokens' (1000) must be a positive multiple"),
    (["--train.max_steps=0"], "give at least one run length"),
    (["--checkpoint.keep_last=0"], "'checkpoint.keep_last' must be >= 1"),
    (["--model.vocab_size=100"], "'model.vocab_size' (100) is too small for the tokenizer this run trains: "
                                 "at least 256 single bytes + 1 special token(s) = 257"),
    (["--optim.max_lr"], "'--optim.max_lr' needs a value"),
    (["stray"], "unexpected argument 'stray'"),
    (["--model=big"], "'model' is a config section, not a key: set its keys, e.g. --model.vocab_size=..."),
    (["--model.=big"], "'model.' is a config section, not a key: set its keys, e.g. --model.vocab_size=..."),
    (["--config", "/nonexistent/x.toml"], "config file not found: /nonexistent/x.toml"),
])
def test_bad_command_lines_are_rejected_naming_the_key(argv, message):
    with pytest.raises(ConfigError) as info:
        parse_args(argv)
    assert message in str(info.value)


def test_bad_toml_values_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nmax_lr = "fast"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: 'optim.max_lr' expects a number, got 'fast'"):
        load_config(bad)
    bad.write_text("[trian]\nmax_steps = 3\n")
    with pytest.raises(ConfigError, match=r"key 'trian.max_steps'; did you mean 'train.max_steps'"):
        load_config(bad)
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_text("[model]\nnum_layers = true\n")
    with pytest.raises(ConfigError, match="'model.num_layers' expects an integer, got True"):
        load_config(bad)


def test_max_tokens_sets_the_run_length_for_the_warmup_check():
    with pytest.raises(ConfigError, match=r"must be shorter than the run or optim.decay_steps \(2 steps\)"):
        parse_args(["--train.max_steps=0", "--train.max_tokens=8192", "--train.global_batch_tokens=4096",
                    "--optim.warmup_steps=2"])
    # an explicit decay length is what the warmup must fit in
    parse_args(["--train.max_steps=10", "--optim.warmup_steps=20", "--optim.decay_steps=50"])


def test_dict_round_trip_is_strict():
    cfg = parse_args(["--optim.max_lr=5e-4"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    broken = cfg.to_dict()
    broken["model"]["n_layers"] = 4
    with pytest.raises(ConfigError, match="did you mean 'model.num_layers'"):
        RunConfig.from_dict(broken)


def test_default_config_file_mirrors_the_dataclass_defaults():
    # `python -m dist_llm.train` must behave the same with or without the configs/ directory.
    cfg = RunConfig()
    for section, values in load_toml(CONFIGS / "tiny.toml").items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, f"configs/tiny.toml {section}.{key}"


@pytest.mark.parametrize("name", ["tiny", "tinystories-17m", "gpt2-small", "gpt2-medium"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert dataclasses.asdict(cfg)["model"]["d_model"] % cfg.model.num_heads == 0


def test_tinystories_recipe():
    m = load_config(CONFIGS / "tinystories-17m.toml").model
    assert (m.vocab_size, m.context_length, m.d_model, m.num_layers, m.num_heads, m.d_ff, m.rope_theta) == (
        10000, 256, 512, 4, 16, 1344, 10000.0)


@pytest.mark.parametrize(("name", "low", "high"), [
    ("tinystories-17m", 17e6, 18e6),  # non-embedding parameters, the recipe's "17M"
    ("gpt2-small", 115e6, 135e6),  # all parameters
    ("gpt2-medium", 330e6, 370e6),
])
def test_shipped_model_sizes(name, low, high):
    import torch

    from dist_llm.model import ModelConfig, TransformerLM

    cfg = load_config(CONFIGS / f"{name}.toml")
    with torch.device("meta"):  # shapes only: no memory, no time
        model = TransformerLM.from_config(ModelConfig.from_dict(dataclasses.asdict(cfg.model)))
    count = model.num_params(include_embeddings=name != "tinystories-17m")
    assert low <= count <= high


def test_model_section_converts_to_model_config_including_fused_ops():
    from dist_llm.model import ModelConfig

    cfg = parse_args(["--model.fused_ops=false", "--model.attn_impl=reference"])
    model_cfg = ModelConfig.from_dict(dataclasses.asdict(cfg.model))
    assert model_cfg.fused_ops is False and model_cfg.attn_impl == "reference"
    assert ModelConfig.from_dict(dataclasses.asdict(parse_args([]).model)).fused_ops is True


def test_a_small_vocab_is_fine_with_a_given_tokenizer():
    # The 257 floor is for a tokenizer trained by the run; a given one is checked against its real size.
    assert parse_args(["--model.vocab_size=100", "--tokenizer.path=tok"]).model.vocab_size == 100
    assert parse_args(["--model.vocab_size=257"]).model.vocab_size == 257
