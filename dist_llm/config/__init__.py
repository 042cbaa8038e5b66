"""Run configuration: typed sections, TOML files, dotted command-line overrides, validation.

Precedence: dataclass defaults < TOML file (`--config`) < command-line overrides
(`--optim.max_lr=3e-4` or `--optim.max_lr 3e-4`). Everything is checked before any work starts: an
unknown key gets a "did you mean" suggestion, a value of the wrong type or an impossible value names
the key. The defaults are the CPU demo (`configs/tiny.toml` mirrors them), so `python -m dist_llm.train`
works even from an installed package without the `configs/` directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_llm.config.errors import ConfigError
from dist_llm.config.validation import validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"


@dataclass
class RunSection:
    dir: str = "runs/tiny"  # run directory: config.json, metrics.jsonl, checkpoints/, final model
    seed: int = 1337  # seeds the initial weights, data order and sampling
    resume: str = ""  # "" (start fresh), "auto" (newest complete checkpoint in dir) or a checkpoint path
    cache_dir: str = "data_cache"  # tokenizers and token files, reused across runs
    init_from: str = ""  # continue pretraining from these weights (run dir, checkpoint dir, import-hf output)


@dataclass
class ModelSection:
    # Field names are exactly dist_llm.model.ModelConfig's, so the section converts directly.
    vocab_size: int = 2048  # embedding rows; a trained tokenizer gets this many tokens
    context_length: int = 128  # tokens per training window (and the longest generation context)
    d_model: int = 128  # width of the residual stream
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads; d_model / num_heads must be even
    d_ff: int = 384  # hidden width of the SwiGLU feed-forward layer
    rope_theta: float = 10000.0  # RoPE base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    attn_impl: str = "sdpa"  # sdpa (torch's fused attention) | reference (written out, for checking)
    fused_ops: bool = True  # torch's fused RMSNorm/SiLU/embedding/RoPE kernels; False = from-scratch layers
    doc_masking: bool = False  # attend only within each document of a packed window (<|endoftext|> ends one)
    doc_positions: bool = False  # with doc_masking: RoPE positions restart at each document


@dataclass
class TokenizerSection:
    path: str = ""  # an existing tokenizer (dir or json); empty = train one with model.vocab_size
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])  # never split by BPE
    train_max_bytes: int = 0  # train BPE on at most this many bytes of the corpus (0 = all)
    num_workers: int = 0  # tokenizer training processes; 0 = one per CPU core


@dataclass
class SourceSection:
    """One `[[data.sources]]` table of a weighted mixture."""

    name: str = ""  # names the source in metrics (val_loss/<name>): letters, digits, '_', '-', '.'
    inputs: list[str] = field(default_factory=list)  # files, directories or globs
    weight: float = 1.0  # share of the training windows: weight / sum of all weights
    val_fraction: float = 0.0  # 0 = data.val_fraction


@dataclass
class DataSection:
    inputs: list[str] = field(default_factory=list)  # text files; empty = the built-in corpus data.builtin
    builtin: str = "stories"  # with no inputs: "stories" (generated simple English) or "stdlib-docs"
    val_fraction: float = 0.02  # share of the documents held out for validation
    num_workers: int = 0  # corpus preparation processes; 0 = one per CPU core
    text_field: str = "text"  # the JSONL field / Parquet column holding each document's text
    skip_bad_records: bool = False  # skip and count bad JSONL lines / Parquet rows instead of stopping
    sources: list[SourceSection] = field(default_factory=list)  # a weighted mixture (instead of inputs)
    on_exhausted: str = "repeat"  # a mixture source that runs out: repeat (a new, reshuffled epoch) | stop


@dataclass
class OptimSection:
    impl: str = "torch"  # "torch" (fused on CUDA and CPU, foreach elsewhere) or "dist_llm" (our AdamW)
    max_lr: float = 3e-3  # learning rate after warmup
    min_lr: float = 3e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 10  # linear warmup from 0 to max_lr over this many steps
    decay_steps: int = 0  # cosine decay ends here; 0 = at the end of the run (set it to extend a run later)
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still computed and logged)


@dataclass
class TrainSection:
    global_batch_tokens: int = 4096  # tokens per optimizer step, over all ranks and micro-steps
    micro_batch_size: int = 32  # sequences per rank per forward/backward
    max_steps: int = 120  # optimizer steps; with max_tokens/num_epochs, the first limit reached ends the run
    max_tokens: int = 0  # run length in training tokens (0 = not set)
    num_epochs: float = 0.0  # run length in passes over the training split (0 = not set)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 needs CUDA)
    compile: bool = False  # whole model under ddp; each block (regional) with fsdp/hsdp or checkpointing
    activation_checkpointing: str = "none"  # none | full (every block) | selective (every ac_every-th)
    ac_every: int = 2  # with activation_checkpointing = "selective": recompute every k-th block
    skip_nonfinite: int = 0  # skip up to this many steps with a non-finite loss; 0 = stop at the first


@dataclass
class EvalSection:
    interval: int = 20  # evaluate every N steps (0 = only at the end) and at the end of each epoch
    num_windows: int = 64  # fixed validation windows, spread evenly over the validation split
    batch_size: int = 32  # validation windows per forward pass
    sample_prompt: str = "Once upon a time"  # the samples before and after training continue this text
    sample_tokens: int = 96  # length of those samples in tokens (0 = no sample)
    temperature: float = 0.8  # sampling temperature of the sample (0 = greedy)
    top_k: int = 40  # 0 = no top-k filtering


@dataclass
class CheckpointSection:
    interval: int = 0  # write every N steps (0 = only at the end)
    keep_last: int = 2  # older complete checkpoints are deleted
    format: str = "auto"  # auto (full with ddp, sharded with fsdp/hsdp) | full (rank 0 writes) | sharded
    async_save: bool = False  # sharded only: training goes on while the checkpoint is written


@dataclass
class LogSection:
    interval: int = 10  # steps between metrics.jsonl lines
    progress_bar: bool = True  # a live progress bar on rank 0's stderr
    tensorboard: bool = False  # also log to RUN/tensorboard (needs tensorboard)
    wandb: bool = False  # also log to Weights & Biases (needs wandb)
    wandb_project: str = "dist_llm"  # the W&B project


@dataclass
class DistSection:
    device: str = "auto"  # auto (cuda > mps > cpu) | cuda | mps | cpu
    backend: str = "auto"  # auto (nccl on CUDA, gloo otherwise) | nccl | gloo
    timeout_s: int = 1800  # seconds a collective may wait for the other ranks before failing
    strategy: str = "ddp"  # ddp (whole model per rank) | fsdp (shard params, grads, optimizer) | hsdp
    shard_group_size: int = 0  # hsdp: ranks per sharding group (0 = GPUs per node, LOCAL_WORLD_SIZE)
    reshard_after_forward: bool = True  # fsdp/hsdp: free gathered params after forward (less memory)
    cpu_offload: bool = False  # fsdp/hsdp: params, grads and optimizer state live on the CPU


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    dist: DistSection = field(default_factory=DistSection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        """Strict: unknown sections/keys and wrong types are errors. Validates the result."""
        cfg = cls()
        for section_name, values in data.items():
            if not isinstance(values, dict):
                hint = _suggest(section_name)
                raise ConfigError(f"{source}: '{section_name}' must be a table of keys{hint}")
            for key, value in values.items():
                set_value(cfg, f"{section_name}.{key}", value, source)
        validate(cfg)
        return cfg


def _section_types() -> dict[str, type]:
    # Field.type is a string under `from __future__ import annotations`; get_type_hints resolves it.
    return typing.get_type_hints(RunConfig)


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. 'optim.max_lr'."""
    return [f"{name}.{f.name}" for name, cls in _section_types().items() for f in dataclasses.fields(cls)]


def _suggest(key: str) -> str:
    keys = all_keys()
    candidates = keys + sorted({k.split(".")[0] for k in keys})
    matches = difflib.get_close_matches(key, candidates, n=2, cutoff=0.5)
    if not matches and "." in key:  # right key, wrong section: optimizer.max_lr -> optim.max_lr
        leaf = key.rsplit(".", 1)[1]
        matches = [k for k in keys if k.endswith("." + leaf)][:1]
    return "; did you mean " + " or ".join(f"'{m}'" for m in matches) + "?" if matches else ""


def _field_type(key: str) -> tuple[Any, type]:
    """(the section dataclass type, the field's resolved type) for a dotted key, or ConfigError."""
    section, _, name = key.partition(".")
    sections = _section_types()
    if section in sections and not name:
        example = dataclasses.fields(sections[section])[0].name
        raise ConfigError(f"'{key}' is a config section, not a key: set its keys, e.g. "
                          f"--{section}.{example}=... (python -m dist_llm.train --help lists them)")
    if section not in sections or not name:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key)}")
    if key.startswith(("data.sources.", "data.sources[")):
        raise ConfigError(f"'{key}': a source's keys cannot be set one by one; give the whole list, "
                          "--data.sources='[{name = \"web\", inputs = [\"web/\"], weight = 3}, ...]' (TOML "
                          "inline tables or JSON), or put [[data.sources]] tables in the --config file")
    hints = typing.get_type_hints(sections[section])
    if name not in hints:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key)}")
    return sections[section], hints[name]


def _table_type(typ: Any) -> type | None:
    """The dataclass of an array of tables (list[SourceSection] -> SourceSection), else None."""
    if typing.get_origin(typ) is list and dataclasses.is_dataclass(typing.get_args(typ)[0]):
        return typing.get_args(typ)[0]
    return None


def _type_name(typ: Any) -> str:
    if _table_type(typ) is not None:
        return "a list of tables"
    if typing.get_origin(typ) is list:
        return "a list of strings"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}[typ]


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Check a TOML/JSON value against the field type (ints are accepted where floats are expected)."""
    ok = False
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif _table_type(typ) is not None:
        ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
        value = [_table(_table_type(typ), v, f"{key}[{i}]", source) for i, v in enumerate(value)] if ok \
            else value
    elif typing.get_origin(typ) is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = list(value) if ok else value
    if not ok:
        raise ConfigError(f"{source}: '{key}' expects {_type_name(typ)}, got {value!r}")
    return value


def _table(cls: type, values: dict[str, Any], key: str, source: str) -> Any:
    """One table of an array of tables (e.g. a [[data.sources]] entry), its keys checked and typed."""
    hints = typing.get_type_hints(cls)
    out = cls()
    for name, value in values.items():
        if name not in hints:
            close = difflib.get_close_matches(name, list(hints), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f" (its keys: {', '.join(hints)})"
            raise ConfigError(f"{source}: unknown key '{key}.{name}'{hint}")
        setattr(out, name, _coerce(value, hints[name], f"{key}.{name}", source))
    return out


def _parse_tables(text: str, key: str) -> Any:
    """An array of tables on the command line: TOML inline tables or JSON."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(
                f"command line: '{key}' expects a list of tables, as TOML inline tables "
                f"(--{key}='[{{name = \"web\", inputs = [\"web/\"], weight = 3}}, ...]') or JSON; got "
                f"{text!r}. Or put [[{key}]] tables in the --config file") from None


def _parse_cli_value(text: str, typ: Any, key: str) -> Any:
    """Turn a command-line string into the field's type."""
    if _table_type(typ) is not None:
        return _parse_tables(text, key)
    try:
        if typ is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            try:
                return int(text.replace("_", ""))
            except ValueError:
                as_float = float(text)  # allow 1e6 for integer counts, but not 2.5
                if not as_float.is_integer():
                    raise
                return int(as_float)
        if typ is float:
            return float(text)
        if typing.get_origin(typ) is list:
            if text.strip().startswith("["):
                return tomllib.loads(f"v = {text}")["v"]
            return [part for part in text.split(",") if part]
        return text
    except (ValueError, tomllib.TOMLDecodeError):
        raise ConfigError(f"command line: '{key}' expects {_type_name(typ)}, got {text!r}") from None


def set_value(cfg: RunConfig, key: str, value: Any, source: str = "command line") -> None:
    """Set a dotted key; strings from the command line are parsed, other values type-checked."""
    _, typ = _field_type(key)
    if source == "command line" and isinstance(value, str):
        value = _parse_cli_value(value, typ, key)
    value = _coerce(value, typ, key, source)
    section, _, name = key.partition(".")
    setattr(getattr(cfg, section), name, value)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def usage() -> str:
    """The --help text (it lives in config_help.py, with the key descriptions)."""
    from dist_llm.config.help import usage as help_text

    return help_text()


def parse_args(argv: list[str]) -> RunConfig:
    """`--config PATH`, `--resume X` and dotted overrides in either `--k=v` or `--k v` form."""
    config_path: str | None = None
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        key, has_value, value = arg[2:].partition("=")
        if not has_value:
            next_is_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            if next_is_value:
                value, i = argv[i + 1], i + 1
            elif key in ("config", "resume") or _field_type(key)[1] is not bool:
                raise ConfigError(f"'--{key}' needs a value")
            else:
                value = "true"  # a bare boolean flag: --train.compile
        if key == "config":
            config_path = value
        elif key == "resume":
            overrides.append(("run.resume", value))
        else:
            _field_type(key)  # fail early on unknown keys, with a suggestion
            overrides.append((key, value))
        i += 1
    return load_config(config_path, overrides)


def load_config(path: str | Path | None = None, overrides: list[tuple[str, str]] | None = None) -> RunConfig:
    """Defaults, then the TOML file (configs/tiny.toml when none is given and it exists), then overrides."""
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    cfg = RunConfig()
    if path is not None:
        for section_name, values in load_toml(path).items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: '{section_name}' is not a [section]{_suggest(section_name)}")
            for key, value in values.items():
                set_value(cfg, f"{section_name}.{key}", value, source=str(path))
    for key, value in overrides or []:
        set_value(cfg, key, value)
    validate(cfg)
    return cfg
