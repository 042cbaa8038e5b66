"""Sharded checkpoints: every rank writes its own shards, in parallel, as safetensors.

A sharded checkpoint is a checkpoint directory (same COMPLETE manifest, checksums, retention and
fallback as the full format: see store.py) whose tensors are in
    shards/shard-NNNNN-model-00001-of-00001.safetensors   one file per writing rank
written by torch.distributed.checkpoint (DCP) with its safetensors storage: each file holds that
rank's pieces of each tensor, and its header records where each piece sits in the whole tensor. So the
files can be read back by any number of ranks, each reading the pieces it needs (resharding), or by
one process as whole tensors (consolidation). No pickle: DCP's own metadata file is not used; the
reader rebuilds it from the safetensors headers. Keys: `model/<parameter name>` and
`optimizer/state.<param index>.<name>`, as in the full format; the optimizer's non-tensor state and
param groups go to optimizer.json, like there.
"""

from __future__ import annotations

import concurrent.futures
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dist_llm.checkpoint.store import (
    COMPLETE,
    OPTIMIZER_JSON,
    CheckpointError,
    join_optimizer_state,
    jsonable_group,
)
from dist_llm.parallel.shards import is_dtensor
from dist_llm.utils.json_file import read_json

SHARDS_DIR = "shards"
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"


def checkpoint_format(path: str | Path) -> str:
    """"sharded" or "full" (manifests written before formats existed are full)."""
    manifest = read_json(Path(path) / COMPLETE, CheckpointError)
    return manifest.get("format", "full") if isinstance(manifest, dict) else "full"


def sharded_state(model_state: dict[str, torch.Tensor],
                  optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(flat tensors to save, the optimizer's JSON rest) from live state dicts (DTensor shards stay
    shards: nothing is gathered)."""
    tensors = {MODEL_PREFIX + name: t.detach() for name, t in model_state.items()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in optimizer_state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER_PREFIX}state.{index}.{name}"] = value.detach()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {"param_groups": [jsonable_group(g) for g in optimizer_state["param_groups"]], "scalars": scalars}
    return tensors, meta


def save_shards(directory: Path, tensors: dict[str, torch.Tensor], process_group: Any = None,
                asynchronous: bool = False) -> concurrent.futures.Future | None:
    """Collective: every rank writes its pieces of `tensors` into directory/shards/. With asynchronous,
    the tensors are first copied to host memory, then written in the background; the returned future
    is done when every rank's files are written (process_group: a group used only for that, so the
    background thread's messages never mix with training's)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    writer = HuggingFaceStorageWriter(str(directory / SHARDS_DIR), save_distributed=True)
    if asynchronous:
        return dcp.async_save(tensors, storage_writer=writer, process_group=process_group)
    dcp.save(tensors, storage_writer=writer, process_group=process_group)
    return None


def _reader(path: Path):
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    shards = path / SHARDS_DIR
    if not shards.is_dir():
        raise CheckpointError(f"{path}: sharded checkpoint without its {SHARDS_DIR}/ directory")
    return HuggingFaceStorageReader(str(shards))


def saved_shapes(path: str | Path) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Every saved tensor's whole shape and dtype, from the shard files' headers."""
    metadata = _reader(Path(path)).read_metadata()
    return {key: (meta.size, meta.properties.dtype) for key, meta in metadata.state_dict_metadata.items()}


def load_shards(path: str | Path, template: dict[str, torch.Tensor]) -> None:
    """Fill `template` in place from a sharded checkpoint. DTensors get this rank's pieces (collective:
    every rank calls it with the same keys); plain tensors get the whole tensor."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    distributed = any(is_dtensor(t) for t in template.values())
    try:
        with warnings.catch_warnings():  # reading whole tensors in one process is what no_dist is for
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(template, storage_reader=_reader(path), no_dist=not distributed)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read the sharded tensors ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def read_full_state(path: str | Path, optimizer: torch.optim.Optimizer | None = None,
                    with_optimizer: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Whole tensors (on the CPU) of a sharded checkpoint: (model state, optimizer state_dict or None).
    This is consolidation, and what a single process resumes from."""
    path = Path(path)
    shapes = saved_shapes(path)
    wanted = {k: v for k, v in shapes.items() if with_optimizer or k.startswith(MODEL_PREFIX)}
    template = {key: torch.empty(size, dtype=dtype) for key, (size, dtype) in wanted.items()}
    load_shards(path, template)
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in template.items() if k.startswith(MODEL_PREFIX)}
    if not with_optimizer:
        return model_state, None
    optimizer_tensors = {k[len(OPTIMIZER_PREFIX):]: v for k, v in template.items()
                         if k.startswith(OPTIMIZER_PREFIX)}
    meta = read_json(path / OPTIMIZER_JSON, CheckpointError)
    return model_state, join_optimizer_state(optimizer_tensors, meta, optimizer)


def load_into_sharded(path: str | Path, model_state: dict[str, torch.Tensor],
                      optimizer: torch.optim.Optimizer,
                      optimizer_template: Callable[[int, str, torch.Size, torch.dtype], torch.Tensor]
                      ) -> dict[str, Any]:
    """Load a sharded checkpoint into a live sharded model (its state_dict(), filled in place) and
    return the optimizer state_dict to load, its tensors already sharded like their parameters.

    optimizer_template(param_index, name, shape, dtype) makes the empty tensor a saved optimizer
    tensor is read into (a DTensor sharded like its parameter, or a plain scalar)."""
    path = Path(path)
    shapes = saved_shapes(path)
    missing = sorted(k for k in (MODEL_PREFIX + n for n in model_state) if k not in shapes)
    if missing:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]})")
    template = {MODEL_PREFIX + name: t for name, t in model_state.items()}
    optimizer_tensors: dict[str, torch.Tensor] = {}
    for key, (size, dtype) in shapes.items():
        if key.startswith(OPTIMIZER_PREFIX):
            _, index, name = key[len(OPTIMIZER_PREFIX):].split(".", 2)
            template[key] = optimizer_tensors[f"state.{index}.{name}"] = optimizer_template(int(index), name,
                                                                                          size, dtype)
    load_shards(path, template)
    meta = read_json(path / OPTIMIZER_JSON, CheckpointError)
    return join_optimizer_state(optimizer_tensors, meta, optimizer)
