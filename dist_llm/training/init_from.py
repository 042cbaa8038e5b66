"""Continued pretraining: start a fresh run from the weights of an existing model (`run.init_from`).

The source is anything dist_llm.checkpoint.pretrained loads: a run directory, a checkpoint directory, or
the output of `python -m dist_llm.export import-hf`. Only the weights come over; the optimizer, the LR
schedule and the data position start fresh. The run's `model` section must describe the same model
(the keys that may differ are `attn_impl` and `fused_ops`, implementation choices that do not change
the weights, and `doc_masking` and `doc_positions`, training choices), and the run must tokenize with
the source's tokenizer: with `tokenizer.path` empty it is taken from the source, otherwise it must be
the same tokenizer. A resume that finds a checkpoint takes precedence: that checkpoint already holds
weights that started from the source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from dist_llm.config import ConfigError, RunConfig
from dist_llm.model.config import architecture_differences
from dist_llm.parallel.shards import copy_full_into


def resolve_init_source(cfg: RunConfig) -> dict[str, str]:
    """Check `run.init_from` before any work: a loadable model whose config is this run's.

    Returns {"model_dir", "tokenizer_dir", "note"} (JSON-able, so rank 0 can hand it to the others).
    """
    from dist_llm.checkpoint.pretrained import PretrainedError, read_model_config, resolve_run

    try:
        source = resolve_run(cfg.run.init_from)  # also accepts a checkpoint dir and import-hf output
        saved = read_model_config(source.model_dir).to_dict()
    except PretrainedError as e:
        raise ConfigError(f"'run.init_from': {e}") from None
    run_dir = Path(cfg.run.dir).resolve()
    if Path(source.model_dir).resolve().is_relative_to(run_dir):
        raise ConfigError(f"'run.init_from' ({cfg.run.init_from}) is inside 'run.dir' ({cfg.run.dir}), whose "
                          "previous outputs a fresh start moves aside; give the new run another run.dir")
    diffs = [f"model.{k}: {theirs!r} in {source.model_dir} vs {ours!r} in this run"
             for k, theirs, ours in architecture_differences(saved, dataclasses.asdict(cfg.model))]
    if diffs:
        raise ConfigError(f"'run.init_from': the model in {source.model_dir} differs from this run's model "
                          f"section: {'; '.join(diffs)}. Set those keys to the source's values")
    return {"model_dir": str(source.model_dir), "tokenizer_dir": str(source.tokenizer_dir),
            "note": source.note or ""}


def check_same_tokenizer(source: dict[str, str], fingerprint: str, tokenizer_path: str) -> None:
    """The run's tokenizer must be the one the source model was trained with (ids mean the same tokens)."""
    from dist_llm.checkpoint.pretrained import ModelSource, PretrainedError, load_tokenizer

    try:
        theirs = load_tokenizer(ModelSource(source["model_dir"], source["tokenizer_dir"]))
    except PretrainedError as e:
        raise ConfigError(f"'run.init_from': {e}") from None
    if theirs.fingerprint != fingerprint:
        raise ConfigError(f"'tokenizer.path' ({tokenizer_path}) is not the tokenizer of the 'run.init_from' "
                          f"model ({source['tokenizer_dir']}); leave tokenizer.path empty to use the model's")


def load_initial_weights(model: torch.nn.Module, source: dict[str, Any]) -> None:
    """Copy the source's weights into the freshly built model (names and shapes checked)."""
    from dist_llm.checkpoint.pretrained import PretrainedError, check_weights_match, read_state_dict

    try:
        state = read_state_dict(source["model_dir"])
        check_weights_match(state, model, f"{source['model_dir']}/model.safetensors")
    except PretrainedError as e:
        raise ConfigError(f"'run.init_from': {e}") from None
    for name, tensor in model.state_dict().items():  # a shard of each under fsdp/hsdp
        copy_full_into(tensor, state[name])
