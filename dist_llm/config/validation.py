"""Rejecting impossible configs before any work starts, naming the key and what was expected.

validate() checks one RunConfig on its own; what depends on the world size or the data (batch split,
run length) is checked where those are known (dist_llm/training/plan.py, preflight.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dist_llm.config.errors import ConfigError

if TYPE_CHECKING:
    from dist_llm.config import DataSection, RunConfig


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"'{key}' {message}")


def _check_bounds(cfg: RunConfig, keys: str, low: float, inclusive: bool = True) -> None:
    """Each of the space-separated dotted keys must be >= low (or > low)."""
    for key in keys.split():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        ok = value >= low if inclusive else value > low
        _require(ok, key, f"must be {'>=' if inclusive else '>'} {low}, got {value}")


def _check_choice(cfg: RunConfig, key: str, choices: tuple[str, ...]) -> None:
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    _require(value in choices, key, f"must be one of {', '.join(choices)}; got {value!r}")


def validate(cfg: RunConfig) -> None:
    """Reject impossible values before any work starts. World-size checks happen at launch."""
    m, t, o = cfg.model, cfg.train, cfg.optim
    _check_bounds(cfg, "model.vocab_size model.context_length model.d_model model.num_layers "
                       "model.num_heads model.d_ff model.rope_theta model.norm_eps optim.max_lr optim.eps "
                       "train.micro_batch_size eval.num_windows eval.batch_size log.interval dist.timeout_s",
                  0, inclusive=False)
    _check_bounds(cfg, "optim.min_lr optim.warmup_steps optim.decay_steps optim.weight_decay optim.beta1 "
                       "optim.beta2 optim.grad_clip train.max_steps train.max_tokens train.num_epochs "
                       "train.skip_nonfinite eval.interval eval.sample_tokens eval.temperature eval.top_k "
                       "checkpoint.interval tokenizer.train_max_bytes tokenizer.num_workers "
                       "data.num_workers", 0)
    _check_bounds(cfg, "checkpoint.keep_last", 1)
    _require(m.d_model % m.num_heads == 0, "model.d_model",
             f"({m.d_model}) must be divisible by model.num_heads ({m.num_heads})")
    _require((m.d_model // m.num_heads) % 2 == 0, "model.num_heads",
             f"gives an odd head size {m.d_model // m.num_heads}; RoPE rotates pairs, so it must be even")
    _check_choice(cfg, "model.attn_impl", ("sdpa", "reference"))
    _require(m.doc_masking or not m.doc_positions, "model.doc_positions",
             "= true needs model.doc_masking = true")
    _check_choice(cfg, "optim.impl", ("torch", "dist_llm"))
    _check_choice(cfg, "data.builtin", ("stories", "stdlib-docs"))
    _check_choice(cfg, "train.precision", ("fp32", "bf16", "fp16"))
    _check_choice(cfg, "dist.backend", ("auto", "nccl", "gloo"))
    _check_choice(cfg, "dist.strategy", ("ddp", "fsdp", "hsdp"))
    _check_choice(cfg, "train.activation_checkpointing", ("none", "full", "selective"))
    _check_choice(cfg, "checkpoint.format", ("auto", "full", "sharded"))
    _check_choice(cfg, "data.on_exhausted", ("repeat", "stop"))
    _check_bounds(cfg, "train.ac_every", 1)
    _check_bounds(cfg, "dist.shard_group_size", 0)
    sharded = cfg.dist.strategy in ("fsdp", "hsdp")
    _require(not (sharded and t.precision == "fp16"), "train.precision",
             f"fp16 is not supported with dist.strategy={cfg.dist.strategy!r} (its loss scaling is "
             f"DDP-only here); use bf16, which needs no loss scaling")
    _require(not (cfg.checkpoint.async_save and cfg.checkpoint.format == "full"), "checkpoint.async_save",
             "needs checkpoint.format = \"sharded\" (or \"auto\" with fsdp/hsdp): a full checkpoint is "
             "gathered to rank 0 and written there")
    _require(cfg.dist.device.split(":")[0] in ("auto", "cuda", "mps", "cpu"), "dist.device",
             f"must be auto, cuda[:N], mps or cpu; got {cfg.dist.device!r}")
    if not cfg.tokenizer.path and not cfg.run.init_from:  # this run trains its BPE tokenizer
        smallest = 256 + len(set(cfg.tokenizer.special_tokens))
        _require(m.vocab_size >= smallest, "model.vocab_size",
                 f"({m.vocab_size}) is too small for the tokenizer this run trains: at least 256 single "
                 f"bytes + {smallest - 256} special token(s) = {smallest}")
    val_fraction = cfg.data.val_fraction
    _require(0 < val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {val_fraction}")
    _require(bool(cfg.data.text_field.strip()), "data.text_field", "must name a JSONL field / Parquet column")
    _validate_sources(cfg.data)
    _require(o.min_lr <= o.max_lr, "optim.min_lr", f"({o.min_lr}) must not exceed optim.max_lr ({o.max_lr})")
    _require(o.beta1 < 1 and o.beta2 < 1, "optim.beta1" if o.beta1 >= 1 else "optim.beta2", "must be below 1")
    micro_tokens = t.micro_batch_size * m.context_length
    divisible = t.global_batch_tokens % micro_tokens == 0
    _require(t.global_batch_tokens > 0 and divisible, "train.global_batch_tokens",
             f"({t.global_batch_tokens}) must be a positive multiple of train.micro_batch_size x "
             f"model.context_length = {t.micro_batch_size} x {m.context_length} = {micro_tokens}")
    _require(t.max_steps > 0 or t.max_tokens > 0 or t.num_epochs > 0, "train.max_steps",
             "is 0 and so are train.max_tokens and train.num_epochs: give at least one run length")
    known = [s for s in (t.max_steps, -(-t.max_tokens // t.global_batch_tokens)) if s > 0]
    if o.decay_steps:
        known = [o.decay_steps]
    if known:  # with num_epochs alone the length is only known once the data is prepared
        _require(o.warmup_steps < min(known), "optim.warmup_steps",
                 f"({o.warmup_steps}) must be shorter than the run or optim.decay_steps ({min(known)} steps)")


SOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _validate_sources(data: DataSection) -> None:
    """[[data.sources]]: named, distinct, with inputs and a positive weight; not together with inputs."""
    if not data.sources:
        return
    _require(not data.inputs, "data.sources",
             f"and data.inputs are both set; data.inputs is the one-source short form: list its files "
             f"{data.inputs} as the inputs of a [[data.sources]] table instead")
    seen: set[str] = set()
    for i, source in enumerate(data.sources):
        key = f"data.sources[{i}]"
        _require(SOURCE_NAME.fullmatch(source.name) is not None, f"{key}.name",
                 f"must be letters, digits, '_', '-' or '.' (it names metrics: val_loss/<name>); "
                 f"got {source.name!r}")
        _require(source.name not in seen, f"{key}.name", f"{source.name!r} is already the name of another "
                                                          "source; source names must be distinct")
        seen.add(source.name)
        _require(bool(source.inputs), f"{key}.inputs", f"(source {source.name!r}) must list at least one "
                                                       "file, directory or glob")
        _require(0 < source.weight < float("inf"), f"{key}.weight",
                 f"(source {source.name!r}) must be a positive number, got {source.weight}")
        _require(0 <= source.val_fraction < 1, f"{key}.val_fraction",
                 f"(source {source.name!r}) must be in (0, 1), or 0 for data.val_fraction; "
                 f"got {source.val_fraction}")
