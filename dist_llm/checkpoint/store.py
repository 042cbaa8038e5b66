"""Checkpoints on disk: safetensors for tensors, JSON for everything else, never pickle.

A checkpoint is a directory `step_{step:08d}/` holding
    model.safetensors       weights, plain parameter names (no `module.` / `_orig_mod.`)
    optimizer.safetensors   optimizer tensors, keys `state.{param_index}.{name}`
    optimizer.json          optimizer scalars and param groups
    trainer_state.json      step, tokens, loader/schedule/scaler/RNG state... (whatever the trainer gives)
    config.json             the resolved run config ("model" holds the ModelConfig fields)
    COMPLETE                written last: a JSON manifest of the other files, their sizes and their
                            SHA-256 checksums ({"step", "files": {name: size}, "sha256": {name: hex}})
It is written into a hidden temporary directory next to its final place, every file and the directory
are fsynced, and only then is it renamed into place, so a crash at any moment leaves either the
previous checkpoint or the new one, complete. Loading checks every file against the manifest: the size
catches truncation, the checksum any other change of content (bit rot, a bad copy). Checkpoints written
before the manifest had checksums are checked by size and structure only. This module knows nothing
about training: it stores the state dicts it is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dist_llm.checkpoint.space import out_of_space, tensor_bytes
from dist_llm.model.config import architecture_differences
from dist_llm.parallel.shards import copy_full_into
from dist_llm.utils.atomic_io import atomic_write, fsync_path
from dist_llm.utils.file_hash import file_sha256
from dist_llm.utils.json_file import read_json

COMPLETE = "COMPLETE"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.json"
# Test hook: when set to a step number, the process dies abruptly halfway through writing that checkpoint.
CRASH_ENV = "DIST_LLM_CRASH_IN_CHECKPOINT_STEP"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or does not match the run; names the file or keys."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# ---------------------------------------------------------------- state dicts <-> files

def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, prefix-free tensors; tensors sharing storage are cloned (safetensors refuses them)."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        tensor = tensor.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        state[name] = tensor
    return state


def jsonable_group(group: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in group.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {"param_groups": [jsonable_group(g) for g in state["param_groups"]], "scalars": scalars}
    return tensors, meta


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                         optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Inverse of split_optimizer_state. Tuples (e.g. betas) come back as tuples where the live optimizer
    has tuples, so the restored param groups compare equal to the saved ones."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(g) for g in meta["param_groups"]]
    if optimizer is not None:
        for saved, live in zip(groups, optimizer.param_groups, strict=False):
            for key, value in live.items():
                if isinstance(value, tuple) and isinstance(saved.get(key), list):
                    saved[key] = tuple(saved[key])
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- durable writes

def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # atomic_write although the whole directory is renamed once complete: it also fsyncs, and gives the
    # file the permissions of a plain open() (safetensors >= 0.8 alone makes it 0600)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def write_json_durably(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())  # no rename: the whole directory is renamed once complete


def crash_if_requested(step: int) -> None:
    if os.environ.get(CRASH_ENV) == str(step):
        os._exit(43)  # no cleanup, no finally blocks: what a kill -9 or a node failure looks like


def new_temp_dir(root: str | Path, step: int, owner: int | None = None) -> Path:
    """An empty hidden directory next to where step's checkpoint goes; `owner` (default: this process)
    tags it so that a crashed writer's leftovers can be told from a live one's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp_{step_dir_name(step)}_{os.getpid() if owner is None else owner}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def space_errors_named(tmp: Path, root: Path, step: int, needed_bytes: int, remove_tmp: bool = True
                       ) -> Iterator[None]:
    """A checkpoint write that fails leaves no partial directory (remove_tmp: this process owns it); one
    that fails for lack of space says where, and how much space was needed. The previous checkpoints are
    untouched either way: they are pruned only after the new one is complete."""
    try:
        yield
    except BaseException as e:  # DCP wraps every rank's failure in a CheckpointException(BaseException)
        if remove_tmp:
            shutil.rmtree(tmp, ignore_errors=True)  # gives the space back, leaves nothing half-written
        if not out_of_space(e) or isinstance(e, CheckpointError):
            raise
        raise full_disk_error(root, step, needed_bytes) from None


def full_disk_error(root: Path, step: int, needed_bytes: int) -> CheckpointError:
    """The error for step's checkpoint failing on a full disk: where, how much it needs, how much is free,
    and that the previous checkpoint is untouched (call it once the partial directory is removed)."""
    free = shutil.disk_usage(root).free if root.exists() else 0
    previous = find_latest_checkpoint(root)
    kept = f"the previous checkpoint {previous} is untouched" if previous else "no earlier checkpoint"
    return CheckpointError(
        f"{root / step_dir_name(step)}: no space left on the device while writing this checkpoint: it "
        f"needs about {needed_bytes / 1e6:,.1f} MB, {free / 1e6:,.1f} MB are free there; {kept}. Free "
        f"some space (or lower checkpoint.keep_last) and resume with --resume auto")


def write_checkpoint(root: str | Path, step: int, *, model_state: dict[str, torch.Tensor],
                     optimizer_state: dict[str, Any] | None, trainer_state: dict[str, Any],
                     config: dict[str, Any], keep_last: int | None = None) -> Path:
    """Atomically write `root/step_{step:08d}/` and keep only the newest `keep_last` complete ones."""
    tmp = new_temp_dir(root, step)
    with space_errors_named(tmp, Path(root), step, tensor_bytes(model_state) + tensor_bytes(optimizer_state)):
        _save_tensors(tmp / MODEL_FILE, model_state)
        crash_if_requested(step)
        if optimizer_state is not None:
            tensors, meta = split_optimizer_state(optimizer_state)
            _save_tensors(tmp / OPTIMIZER_TENSORS, tensors)
            write_json_durably(tmp / OPTIMIZER_JSON, meta)
        write_json_durably(tmp / TRAINER_STATE, trainer_state)
        write_json_durably(tmp / CONFIG, config)
        return finalize_checkpoint(tmp, root, step, keep_last)


def checkpoint_files(directory: Path) -> list[Path]:
    """Every file under a checkpoint directory (shard files sit in a subdirectory), sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE)


def finalize_checkpoint(tmp: Path, root: str | Path, step: int, keep_last: int | None = None, *,
                        sha256: dict[str, str] | None = None, fmt: str = "full") -> Path:
    """Write the COMPLETE manifest of everything in `tmp`, then move it into place as step's checkpoint.

    sha256: the files' checksums when the writers already computed them (each rank its own files, in
    parallel); otherwise they are computed here, right after writing, while the files are still in the
    page cache. "files" keeps its old form (name -> size) so that older versions still read it.
    """
    root = Path(root)
    final = root / step_dir_name(step)
    files = {p.relative_to(tmp).as_posix(): p for p in checkpoint_files(tmp)}
    # The manifest lists what is there: a checkpoint whose weights are missing must never get one.
    has_weights = MODEL_FILE in files if fmt == "full" else any(n.endswith(".safetensors") for n in files)
    if not has_weights or CONFIG not in files:
        raise CheckpointError(f"{tmp}: holds no weights or no {CONFIG} ({sorted(files)}): removed by "
                              f"another process while being written? Not marking it complete")
    sums = sha256 if sha256 is not None else {name: file_sha256(p) for name, p in files.items()}
    if set(sums) != set(files):
        raise CheckpointError(f"{tmp}: checksums cover {sorted(sums)[:3]}..., the files are "
                              f"{sorted(files)[:3]}...")
    manifest = {"step": step, "format": fmt, "files": {n: p.stat().st_size for n, p in files.items()},
                "sha256": sums}
    write_json_durably(tmp / COMPLETE, manifest)
    for sub in {p.parent for p in files.values()} - {tmp}:
        fsync_path(sub)
    fsync_path(tmp)
    if final.exists():  # rename() cannot replace a non-empty directory: move the old one aside first
        old = root / f".old_{step_dir_name(step)}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(root)
    prune_checkpoints(root, keep_last)
    return final


def prune_checkpoints(root: str | Path, keep_last: int | None) -> None:
    """Delete complete checkpoints beyond the newest keep_last (never the last one) and stale temp dirs."""
    root = Path(root)
    # Left by a crash mid-write. Not in use: the trainer holds the run dir's lock (training/run_lock.py),
    # so no other process writes here (a second writer used to delete this one's directory mid-write).
    for stale in root.glob(".tmp_step_*"):
        if not stale.name.endswith(f"_{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    if keep_last is None:
        return
    complete = list_complete(root)
    for old in complete[: max(0, len(complete) - max(1, keep_last))]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- finding and verifying

def _step_of(path: Path) -> int:
    try:
        return int(path.name.removeprefix("step_"))
    except ValueError:
        return -1


def list_complete(root: str | Path) -> list[Path]:
    """Complete checkpoint dirs under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / COMPLETE).is_file() and _step_of(p) >= 0]
    return sorted(found, key=_step_of)


def find_latest_checkpoint(root: str | Path) -> Path | None:
    complete = list_complete(root)
    return complete[-1] if complete else None


def _safetensors_header(path: Path) -> dict[str, Any]:
    """Parse the header and check the file is as long as the header says (catches truncation)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: corrupted safetensors header "
                                  f"(length {header_len}, file {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupted safetensors header (not JSON)") from None
    data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + data_end != size:
        raise CheckpointError(f"{path}: truncated or padded safetensors file: header describes "
                              f"{8 + header_len + data_end} bytes, file has {size}")
    return header


def _read_json(path: Path) -> Any:
    return read_json(path, CheckpointError)  # a missing or corrupted file is a broken checkpoint


def verify_checkpoint(path: str | Path, *, checksums: bool = True) -> None:
    """Raise CheckpointError naming the first missing, truncated or corrupted file.

    checksums=False skips hashing (it reads every byte, at about 1.5 GB/s: bench/bench_checkpoint.py) for
    a checkpoint whose checksums were already verified, e.g. by rank 0 before the other ranks load it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (a checkpoint is a directory "
                              f"step_NNNNNNNN/ with a {COMPLETE} manifest)")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path}: no {COMPLETE} marker; the checkpoint was never finished")
    manifest = _read_json(path / COMPLETE)
    if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
            and isinstance(manifest.get("sha256", {}), dict)):
        raise CheckpointError(f"{path / COMPLETE}: corrupted manifest (expected a JSON object with a "
                              f'"files" object and optionally a "sha256" object)')
    # Absent from checkpoints written before the manifest had checksums: those get the size check only.
    recorded = manifest.get("sha256", {}) if checksums else {}
    for name, size in manifest["files"].items():
        file = path / name
        try:
            _verify_file(file, size, recorded.get(name))
        except OSError as e:  # unreadable (permissions, an I/O error, removed meanwhile): as bad as missing
            raise CheckpointError(f"{file}: cannot be read ({e.strerror or e})") from None
    listed = manifest["files"]
    weights = [MODEL_FILE] if manifest.get("format", "full") == "full" else \
        [n for n in listed if n.endswith(".safetensors")][:1]
    for name in (weights or ["shards/*.safetensors"]):
        if name not in listed:  # a manifest written while another process deleted files mid-write
            raise CheckpointError(f"{path / name}: missing from the checkpoint (its {COMPLETE} manifest does "
                                  f"not list it)")


def _verify_file(file: Path, size: int, sha256: str | None) -> None:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing from the checkpoint")
    if file.stat().st_size != size:
        raise CheckpointError(f"{file}: truncated or altered (has {file.stat().st_size} bytes, "
                              f"{size} were written)")
    if sha256 is not None and (actual := file_sha256(file)) != sha256:
        raise CheckpointError(f"{file}: sha256 checksum does not match the one recorded when the "
                              f"checkpoint was written (now {actual[:16]}..., written "
                              f"{str(sha256)[:16]}...): the file is corrupted")
    if file.name.endswith(".safetensors"):
        _safetensors_header(file)
    elif file.name.endswith(".json"):
        _read_json(file)


@dataclass
class LoadedCheckpoint:
    path: Path
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None  # a torch optimizer state_dict, ready to load
    trainer_state: dict[str, Any]
    config: dict[str, Any]


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None


def read_checkpoint(path: str | Path, optimizer: torch.optim.Optimizer | None = None, *,
                    checksums: bool = True) -> LoadedCheckpoint:
    """Verify (see verify_checkpoint for `checksums`), then load everything onto the CPU as whole tensors,
    whichever format the checkpoint has (a sharded one is consolidated in memory)."""
    from dist_llm.checkpoint.sharded import checkpoint_format, read_full_state

    path = Path(path)
    verify_checkpoint(path, checksums=checksums)
    if checkpoint_format(path) == "sharded":
        model_state, optimizer_state = read_full_state(path, optimizer)
    else:
        model_state, optimizer_state = _load_tensors(path / MODEL_FILE), None
        if (path / OPTIMIZER_TENSORS).is_file():
            optimizer_state = join_optimizer_state(_load_tensors(path / OPTIMIZER_TENSORS),
                                                   _read_json(path / OPTIMIZER_JSON), optimizer)
    return LoadedCheckpoint(path=path, model_state=model_state, optimizer_state=optimizer_state,
                            trainer_state=_read_json(path / TRAINER_STATE), config=_read_json(path / CONFIG))


def check_model_config(saved: dict[str, Any], current: dict[str, Any], source: str | Path) -> None:
    """A checkpoint's model must be the run's (implementation switches such as attn_impl may differ);
    name every differing key."""
    diffs = [f"{k}: checkpoint {theirs!r} vs run {ours!r}"
             for k, theirs, ours in architecture_differences(saved, current)]
    if diffs:
        raise CheckpointError(f"{source}: model config differs from this run's: " + "; ".join(diffs))


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy whole tensors into a model's weights, after checking names and shapes. Under FSDP the
    weights are shards (DTensors, whose shape is the whole tensor's): each rank keeps its part."""
    own = unwrap_model(model).state_dict()
    _check_weights_fit(own, {k: tuple(v.shape) for k, v in state.items()}, source)
    for name, tensor in own.items():  # state_dict() values share storage with the parameters
        copy_full_into(tensor, state[name])


def stream_model_state(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """load_model_state from a full checkpoint's model.safetensors, read one tensor at a time: a rank of
    a sharded model keeps only its part of each, so the whole model is never in its memory."""
    path = Path(checkpoint) / MODEL_FILE
    own = unwrap_model(model).state_dict()
    try:
        with safe_open(path, framework="pt") as f:
            _check_weights_fit(own, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, checkpoint)  # noqa: SIM118
            for name, tensor in own.items():
                copy_full_into(tensor, f.get_tensor(name))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None


def stream_optimizer_tensors(checkpoint: str | Path, keep: Callable[[str, torch.Tensor], torch.Tensor]
                             ) -> dict[str, torch.Tensor]:
    """A full checkpoint's optimizer tensors, read one at a time and each passed through keep(key,
    tensor) (e.g. to cut it to this rank's shard) before the next is read."""
    path = Path(checkpoint) / OPTIMIZER_TENSORS
    try:
        with safe_open(path, framework="pt") as f:
            return {key: keep(key, f.get_tensor(key)) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None


def _check_weights_fit(own: dict[str, torch.Tensor], saved: dict[str, tuple[int, ...]],
                       source: str | Path) -> None:
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [f"{k} {saved[k]} vs {tuple(own[k].shape)}"
              for k in own if k in saved and saved[k] != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]})")
