"""Everything that must survive a restart: choosing a checkpoint, saving and restoring trainer state.

Saved per checkpoint (see dist_llm.checkpoint for the format): model and optimizer tensors, and a JSON
trainer state with the step, tokens seen, the data loader's position, the LR schedule position, the
gradient scaler, every rank's RNG states (gathered to rank 0), the resolved config and the tokenizer
fingerprint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dist_llm import distributed
from dist_llm.checkpoint import (
    CONFIG,
    TRAINER_STATE,
    CheckpointError,
    LoadedCheckpoint,
    check_model_config,
    list_complete,
    load_model_state,
    model_state_for_saving,
    verify_checkpoint,
    write_checkpoint,
)
from dist_llm.config import RunConfig
from dist_llm.json_file import read_json
from dist_llm.rng import capture_rng_state, restore_rng_state

# Per-process execution choices, not state: they must follow this run's optimizer, not the saved one.
_LIVE_GROUP_KEYS = ("fused", "foreach", "capturable", "differentiable")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def choose_checkpoint(cfg: RunConfig, say: Callable[[str], None]) -> str | None:
    """The checkpoint to resume from: "auto" takes the newest sound one, skipping broken ones and saying
    so; an explicit path must be sound. Its model config must be this run's (checked before any work)."""
    resume, root = cfg.run.resume, checkpoint_root(cfg.run.dir)
    if not resume:
        return None
    if resume != "auto" and not Path(resume).exists():
        available = ", ".join(p.name for p in list_complete(root))
        there = f"the complete checkpoints in {root} are {available}" if available else \
            f"{root} holds no complete checkpoint"
        raise CheckpointError(f"--resume {resume}: the path does not exist (mistyped, or a checkpoint "
                              f"already deleted by checkpoint.keep_last?); {there}")
    candidates = list_complete(root)[::-1] if resume == "auto" else [Path(resume)]
    chosen = None
    for path in candidates:
        try:
            verify_checkpoint(path)
            chosen = path
            break
        except CheckpointError as e:
            if resume != "auto":
                raise  # an explicitly named checkpoint: no silent fallback
            say(f"resume: {e}; falling back to the previous complete checkpoint")
    if chosen is None:
        if candidates:
            raise CheckpointError(f"--resume auto: none of the {len(candidates)} checkpoints in {root} "
                                  "is usable")
        say(f"resume: no checkpoint in {root}; starting from scratch")
        return None
    saved = read_json(chosen / CONFIG, CheckpointError)
    check_model_config(saved.get("model", {}), dataclasses.asdict(cfg.model), chosen)
    return str(chosen)


def save_training_state(cfg: RunConfig, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, loader: Any, counters: dict[str, Any],
                        tokenizer_fingerprint: str, lr_schedule: dict[str, Any]) -> Path | None:
    """Collective: every rank contributes its RNG state; rank 0 writes. Returns the path on rank 0.

    counters: tokens seen, elapsed time... (restored as they are); lr_schedule: where the schedule stands
    (the next step's LR follows from the step and the config; saved so a changed schedule can be told).
    """
    rng_states = distributed.gather_json(capture_rng_state())
    path = None
    if distributed.is_main():
        config = cfg.to_dict()
        trainer_state = {
            "step": step,
            **counters,
            "loader": loader.state_dict(),  # holds the epoch too
            "train_data_fingerprint": loader.dataset.content_fingerprint,  # a resume checks it
            "lr_schedule": lr_schedule,
            "grad_scaler": scaler.state_dict(),
            "rng": rng_states,
            "world_size": len(rng_states),
            "tokenizer_fingerprint": tokenizer_fingerprint,
            "config": config,
        }
        path = write_checkpoint(checkpoint_root(cfg.run.dir), step, model_state=model_state_for_saving(model),
                                optimizer_state=optimizer.state_dict(), trainer_state=trainer_state,
                                config=config, keep_last=cfg.checkpoint.keep_last)
    distributed.barrier()
    return path


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], path: str | Path) -> None:
    """Load a saved optimizer state; the kernel flags (fused, foreach, ...) stay this run's, so a
    checkpoint written by another kernel or device (foreach on an older run, fused on CUDA) resumes
    with the kernel this process chose, instead of silently switching to the saved one."""
    live = [{k: g[k] for k in _LIVE_GROUP_KEYS if k in g} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this optimizer ({e})") from None
    for group, flags in zip(optimizer.param_groups, live, strict=True):
        group.update(flags)


def _check_same_data(loaded: LoadedCheckpoint, loader: Any) -> None:
    """A resume continues the checkpoint's data stream, so the data must be the one it was trained on:
    the same content fingerprint (the inputs' sha256, preparation options, tokenizer), and the same
    number of training windows, which the saved stream position depends on (checkpoints from before the
    fingerprint have only this)."""
    state = loaded.trainer_state
    saved_windows = state.get("loader", {}).get("num_windows")
    now_windows = loader.state_dict()["num_windows"]
    saved_print = state.get("train_data_fingerprint")
    if saved_print not in (None, loader.dataset.content_fingerprint):
        what = "their content or preparation changed (other data fingerprint)"
    elif saved_windows not in (None, now_windows):
        what = f"{saved_windows:,} training windows then, {now_windows:,} now"
    else:
        return
    data = state.get("config", {}).get("data", {})
    trained_on = f" (data.inputs {data['inputs']}, data.val_fraction {data.get('val_fraction')})" \
        if "inputs" in data else ""
    raise CheckpointError(
        f"{loaded.path}: the training data differs from the data the run was trained on{trained_on}: "
        f"{what}. A resume continues the same data stream; to train these weights on this data, start a "
        f"new run from them: --run.init_from={loaded.path} with another --run.dir")


def restore_training_state(loaded: LoadedCheckpoint, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loader: Any,
                           tokenizer_fingerprint: str, rank: int) -> dict[str, Any]:
    """Load a checkpoint chosen by choose_checkpoint (which checked its model config) into the live
    objects, after checking its tokenizer and data; return its trainer state."""
    state = loaded.trainer_state
    if state.get("tokenizer_fingerprint") != tokenizer_fingerprint:
        raise CheckpointError(f"{loaded.path}: was trained with another tokenizer (fingerprint "
                              f"{str(state.get('tokenizer_fingerprint'))[:12]}..., this run has "
                              f"{tokenizer_fingerprint[:12]}...)")
    _check_same_data(loaded, loader)
    load_model_state(model, loaded.model_state, loaded.path)
    if loaded.optimizer_state is None:
        raise CheckpointError(f"{loaded.path}: has no optimizer state")
    load_optimizer_state(optimizer, loaded.optimizer_state, loaded.path)
    if state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    try:
        loader.load_state_dict(state["loader"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{loaded.path}: unusable data-loader state in {TRAINER_STATE} ({e})") from None
    rng = state.get("rng") or []
    if rank < len(rng):  # with more ranks than before, the new ones keep their fresh seeds
        restore_rng_state(rng[rank])
    return state
