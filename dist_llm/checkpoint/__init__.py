"""Checkpoints: atomic, checksummed directories of safetensors + JSON, in two formats.

full (store.py): rank 0 writes whole tensors; sharded (sharded.py): every rank writes its own shards.
Both share the COMPLETE manifest, verification, retention and the search for the newest sound one.
`python -m dist_llm.checkpoint consolidate CKPT --out DIR` turns either into a plain model directory.
"""

from dist_llm.checkpoint.sharded import checkpoint_format, read_full_state
from dist_llm.checkpoint.single_file import load_checkpoint, save_checkpoint
from dist_llm.checkpoint.store import (
    COMPLETE,
    CONFIG,
    CRASH_ENV,
    MODEL_FILE,
    OPTIMIZER_JSON,
    OPTIMIZER_TENSORS,
    TRAINER_STATE,
    CheckpointError,
    LoadedCheckpoint,
    check_model_config,
    find_latest_checkpoint,
    join_optimizer_state,
    list_complete,
    load_model_state,
    model_state_for_saving,
    prune_checkpoints,
    read_checkpoint,
    split_optimizer_state,
    step_dir_name,
    unwrap_model,
    verify_checkpoint,
    write_checkpoint,
)

__all__ = [
    "COMPLETE", "CONFIG", "CRASH_ENV", "MODEL_FILE", "OPTIMIZER_JSON", "OPTIMIZER_TENSORS", "TRAINER_STATE",
    "CheckpointError", "LoadedCheckpoint", "check_model_config", "checkpoint_format",
    "find_latest_checkpoint",
    "join_optimizer_state", "list_complete", "load_checkpoint", "load_model_state", "model_state_for_saving",
    "prune_checkpoints", "read_checkpoint", "read_full_state", "save_checkpoint", "split_optimizer_state",
    "step_dir_name", "unwrap_model", "verify_checkpoint", "write_checkpoint",
]
