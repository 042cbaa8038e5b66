"""The small public API: save_checkpoint / load_checkpoint of a model, an optimizer and an iteration.

To a checkpoint directory (the trainer's full format, store.py), or to one safetensors file or an open
binary file, whose metadata holds the iteration and the optimizer's scalars. Never pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from dist_llm.checkpoint.store import (
    CheckpointError,
    join_optimizer_state,
    load_model_state,
    model_state_for_saving,
    read_checkpoint,
    split_optimizer_state,
    unwrap_model,
    write_checkpoint,
)
from dist_llm.utils.atomic_io import atomic_write


def _is_file_object(target: Any) -> bool:
    return hasattr(target, "write") or hasattr(target, "read")


def _blob(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int) -> bytes:
    tensors = {f"model/{k}": v for k, v in model_state_for_saving(model).items()}
    opt_tensors, opt_meta = split_optimizer_state(optimizer.state_dict())
    tensors.update({f"optimizer/{k}": v for k, v in opt_tensors.items()})
    metadata = {"format": "dist_llm.checkpoint", "iteration": str(int(iteration)),
                "optimizer": json.dumps(opt_meta)}
    return save_safetensors_bytes(tensors, metadata=metadata)


def save_checkpoint(path: str | os.PathLike | BinaryIO, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, iteration: int) -> None:
    """Save model + optimizer + iteration.

    An open binary file gets one safetensors blob (metadata holds the iteration and optimizer scalars);
    so does a path with a file suffix (e.g. `ckpt.safetensors`), written atomically; any other path
    becomes a checkpoint directory in the trainer's format.
    """
    if _is_file_object(path):
        path.write(_blob(model, optimizer, iteration))
        return
    path = Path(path)
    if path.suffix and not path.is_dir():
        blob = _blob(model, optimizer, iteration)
        atomic_write(path, lambda tmp: tmp.write_bytes(blob))
        return
    bare = unwrap_model(model)
    config = {"model": bare.config.to_dict()} if hasattr(getattr(bare, "config", None), "to_dict") else {}
    tmp_root = path.parent / f".tmp_{path.name}_{os.getpid()}"
    written = write_checkpoint(tmp_root, iteration, model_state=model_state_for_saving(model),
                               optimizer_state=optimizer.state_dict(), trainer_state={"step": int(iteration)},
                               config=config)
    if path.exists():
        shutil.rmtree(path)
    os.replace(written, path)
    shutil.rmtree(tmp_root, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike | BinaryIO, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None) -> int:
    """Restore what save_checkpoint wrote (either form) into model and optimizer; return the iteration."""
    if _is_file_object(path) or Path(path).is_file():
        if _is_file_object(path):
            data, source = path.read(), getattr(path, "name", "<file object>")
        else:
            data, source = Path(path).read_bytes(), path
        try:
            (header_len,) = struct.unpack("<Q", data[:8])
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
            tensors = load_safetensors_bytes(data)
        except (struct.error, ValueError, SafetensorError) as e:
            raise CheckpointError(f"{source}: not a readable checkpoint file ({e})") from None
        if metadata.get("format") != "dist_llm.checkpoint":
            raise CheckpointError(f"{source}: not a dist_llm checkpoint (metadata {metadata})")
        load_model_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, source)
        if optimizer is not None:
            opt_tensors = {k[10:]: v for k, v in tensors.items() if k.startswith("optimizer/")}
            opt_meta = json.loads(metadata["optimizer"])
            optimizer.load_state_dict(join_optimizer_state(opt_tensors, opt_meta, optimizer))
        return int(metadata["iteration"])
    loaded = read_checkpoint(path, optimizer)
    load_model_state(model, loaded.model_state, loaded.path)
    if optimizer is not None:
        if loaded.optimizer_state is None:
            raise CheckpointError(f"{loaded.path}: has no optimizer state")
        optimizer.load_state_dict(loaded.optimizer_state)
    return int(loaded.trainer_state["step"])

