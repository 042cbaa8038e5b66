"""Load a trained model and its tokenizer from a run directory or a checkpoint directory.

The one place the after-training commands (generate, evaluate, export) find their inputs, so that all of
them accept the same directories and fail with the same clear messages. Layout (written by the trainer):

    RUN/model.safetensors, RUN/config.json          final weights + run config ("model" key: ModelConfig)
    RUN/tokenizer/dist_llm_tokenizer.json           the tokenizer
    RUN/checkpoints/step_00001000/                  model.safetensors, config.json, ..., COMPLETE (last)

A run directory without a final model (training stopped early) falls back to its newest complete
checkpoint, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dist_llm.checkpoint import COMPLETE as COMPLETE_MARKER
from dist_llm.checkpoint import (
    CheckpointError,
    checkpoint_format,
    find_latest_checkpoint,
    read_full_state,
    verify_checkpoint,
)
from dist_llm.model import ModelConfig, TransformerLM
from dist_llm.tokenizer import Tokenizer
from dist_llm.utils.atomic_io import atomic_write, atomic_write_json
from dist_llm.utils.json_file import read_json

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


class PretrainedError(ValueError):
    """A directory that does not hold a loadable model, config or tokenizer."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights, config and tokenizer of one model are."""

    model_dir: Path  # holds model.safetensors and config.json (a run dir or a checkpoint dir)
    tokenizer_dir: Path
    note: str | None = None  # set when we fell back from the run's final model to a checkpoint


def _tokenizer_dir_for(model_dir: Path) -> Path:
    # A checkpoint lives at RUN/checkpoints/step_N/: its tokenizer is the run's, two levels up.
    candidates = [model_dir / TOKENIZER_DIR]
    if model_dir.parent.name == "checkpoints":
        candidates.append(model_dir.parent.parent / TOKENIZER_DIR)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise PretrainedError(
        f"{model_dir}: no tokenizer found; looked for "
        + " and ".join(str(c / "dist_llm_tokenizer.json") for c in candidates)
    )


def _looks_like_run_dir(path: Path) -> bool:
    """What the trainer writes into a run directory, and never into a checkpoint."""
    return any((path / name).exists() for name in ("checkpoints", "metrics.jsonl", "tokenizer"))


def resolve_checkpoint(checkpoint_dir: str | Path) -> ModelSource:
    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise PretrainedError(f"{ckpt}: checkpoint directory not found")
    if not (ckpt / COMPLETE_MARKER).is_file() and _looks_like_run_dir(ckpt):
        raise PretrainedError(
            f"{ckpt}: is a run directory, not a checkpoint; pass it with --run (its final model, else its "
            f"newest complete checkpoint), or give --checkpoint one of {ckpt / 'checkpoints'}/step_*")
    if not (ckpt / COMPLETE_MARKER).is_file():
        raise PretrainedError(
            f"{ckpt}: checkpoint is incomplete (no {COMPLETE_MARKER} marker); it was interrupted while being "
            "written. Use an older checkpoint or the run directory"
        )
    try:  # every file the COMPLETE manifest lists is there, with the size and checksum that were written
        verify_checkpoint(ckpt)
    except CheckpointError as e:
        raise PretrainedError(str(e)) from None
    sharded = checkpoint_format(ckpt) == "sharded"  # tensors in shards/, read as whole tensors
    for name in (CONFIG_FILE,) if sharded else (MODEL_FILE, CONFIG_FILE):
        if not (ckpt / name).is_file():
            raise PretrainedError(f"{ckpt}: checkpoint has no {name}")
    return ModelSource(ckpt, _tokenizer_dir_for(ckpt))


def resolve_run(run_dir: str | Path) -> ModelSource:
    """The run's final model, else its newest complete checkpoint (with a note saying so)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise PretrainedError(f"{run}: run directory not found")
    if (run / MODEL_FILE).is_file():
        if not (run / CONFIG_FILE).is_file():
            raise PretrainedError(f"{run}: has {MODEL_FILE} but no {CONFIG_FILE}")
        return ModelSource(run, _tokenizer_dir_for(run))
    if (run / COMPLETE_MARKER).is_file():  # a checkpoint directory given as --run
        return resolve_checkpoint(run)
    ckpt = find_latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        raise PretrainedError(
            f"{run}: no final model ({MODEL_FILE}) and no complete checkpoint "
            f"(checkpoints/step_*/ with a {COMPLETE_MARKER} marker); has training written anything yet?"
        )
    source = resolve_checkpoint(ckpt)
    note = (
        f"{run} has no final {MODEL_FILE} (training did not finish); "
        f"using the newest complete checkpoint {ckpt}"
    )
    return ModelSource(source.model_dir, source.tokenizer_dir, note)


def read_model_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / CONFIG_FILE
    config = read_json(path, PretrainedError)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise PretrainedError(f'{path}: expected a JSON object with a "model" object holding the ModelConfig')
    try:
        return ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as e:
        raise PretrainedError(f'{path}: bad "model" config: {e}') from None


def read_state_dict(model_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(model_dir) / MODEL_FILE
    if not path.exists() and (Path(model_dir) / COMPLETE_MARKER).is_file() \
            and checkpoint_format(model_dir) == "sharded":
        try:
            state, _ = read_full_state(model_dir, with_optimizer=False)
        except CheckpointError as e:
            raise PretrainedError(str(e)) from None
        return {name: tensor.to(device) for name, tensor in state.items()}
    try:
        return load_file(path, device=str(device))
    except FileNotFoundError:
        raise PretrainedError(f"{path}: not found") from None
    except SafetensorError as e:
        raise PretrainedError(f"{path}: not a readable safetensors file ({e})") from None


def check_weights_match(state_dict: dict[str, torch.Tensor], model: TransformerLM, source: str) -> None:
    """Same names and shapes as `model`, or an error listing the differences (not torch's wall of text)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [f"{k} {tuple(state_dict[k].shape)} != {expected[k]}"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
    if wrong:
        problems.append(f"shape mismatches (file != config) {wrong[:4]}")
    if problems:
        raise PretrainedError(f"{source}: weights do not match config.json: {'; '.join(problems)}")


def load_model(source: ModelSource, device: str | torch.device = "cpu") -> TransformerLM:
    """The model in eval mode on `device`, weights as stored (float32 per the run layout)."""
    cfg = read_model_config(source.model_dir)
    state_dict = read_state_dict(source.model_dir, device)
    model = TransformerLM.from_config(cfg, device=device)
    check_weights_match(state_dict, model, str(source.model_dir / MODEL_FILE))
    model.load_state_dict(state_dict)
    return model.eval()


def load_tokenizer(source: ModelSource) -> Tokenizer:
    try:
        return Tokenizer.load(source.tokenizer_dir)
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{source.tokenizer_dir}: cannot load the tokenizer: {e}") from None


def save_pretrained(
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    tokenizer: Tokenizer | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a run-directory-shaped model: model.safetensors (float32), config.json, tokenizer/.

    Each file is written atomically; callers that must not leave a partial directory build it under a
    temporary name first (see dist_llm.export.convert).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(out_dir / MODEL_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_json(out_dir / CONFIG_FILE, {"model": cfg.to_dict(), **(extra_config or {})})
    if tokenizer is not None:
        tokenizer.save(out_dir / TOKENIZER_DIR)
    return out_dir


def load_pretrained(
    *, run: str | Path | None = None, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[TransformerLM, Tokenizer, ModelSource]:
    """Model + tokenizer from exactly one of a run directory or a checkpoint directory."""
    if (run is None) == (checkpoint is None):
        raise PretrainedError("give exactly one of a run directory or a checkpoint directory")
    source = resolve_run(run) if run is not None else resolve_checkpoint(checkpoint)
    model = load_model(source, device)
    tokenizer = load_tokenizer(source)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise PretrainedError(
            f"{source.tokenizer_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model in "
            f"{source.model_dir} only {model.config.vocab_size}; they do not belong together"
        )
    return model, tokenizer, source
