"""Everything that must survive a restart: choosing a checkpoint, saving and restoring trainer state.

Saved per checkpoint (see dist_llm.checkpoint for the formats): model and optimizer tensors, and a JSON
trainer state with the step, tokens seen, the data loader's position, the LR schedule position, the
gradient scaler, every rank's RNG states (gathered to rank 0), the resolved config and the tokenizer
fingerprint. Either format resumes under any strategy and world size: a full checkpoint's whole tensors
are cut into this rank's shards, a sharded one is read piece by piece (or whole, without sharding).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dist_llm.checkpoint.sharded import checkpoint_format, load_into_sharded, save_shards, sharded_state
from dist_llm.checkpoint.space import out_of_space, tensor_bytes
from dist_llm.checkpoint.store import (
    CONFIG,
    OPTIMIZER_JSON,
    TRAINER_STATE,
    CheckpointError,
    check_model_config,
    checkpoint_files,
    crash_if_requested,
    finalize_checkpoint,
    full_disk_error,
    join_optimizer_state,
    list_complete,
    load_model_state,
    model_state_for_saving,
    new_temp_dir,
    read_checkpoint,
    space_errors_named,
    step_dir_name,
    stream_model_state,
    stream_optimizer_tensors,
    verify_checkpoint,
    write_checkpoint,
    write_json_durably,
)
from dist_llm.config import ConfigError, RunConfig
from dist_llm.parallel import distributed
from dist_llm.parallel.parallelize import ParallelModel
from dist_llm.parallel.shards import gathered, is_dtensor, shard_like
from dist_llm.utils.file_hash import file_sha256
from dist_llm.utils.json_file import read_json
from dist_llm.utils.rng import capture_rng_state, restore_rng_state

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


def checkpoint_format_for(fmt: str, sharded_model: bool, world_size: int) -> str:
    """The format this run writes: "auto" is sharded exactly when the model is sharded."""
    if fmt == "auto":
        return "sharded" if sharded_model else "full"
    if fmt == "sharded" and not sharded_model:
        why = "this run has one process" if world_size == 1 else "dist.strategy is ddp (whole replicas)"
        raise ConfigError(f"'checkpoint.format' sharded needs a sharded model (dist.strategy fsdp or hsdp on "
                          f"several processes), but {why}; use full or auto")
    return fmt


class CheckpointWriter:
    """Writes the trainer's checkpoints in the run's format. Collective: every rank calls save().

    full: every tensor is gathered whole, one at a time, and rank 0 writes it (so rank 0 never holds the
      optimizer state twice). sharded: every rank writes its own shards, in parallel, and each hashes a
      share of the files for the manifest. With asynchronous (sharded only), the shards are copied to
      host memory and written in the background while training goes on; rank 0 then writes the manifest
      and moves the checkpoint into place. wait() finishes a pending one (save() and close() call it).
    """

    def __init__(self, cfg: RunConfig, fmt: str, asynchronous: bool = False) -> None:
        self.cfg, self.fmt = cfg, fmt
        self.asynchronous = asynchronous and fmt == "sharded"
        self.root = checkpoint_root(cfg.run.dir)
        self._pending: _PendingSave | None = None
        self._error: BaseException | None = None
        self._group = distributed.new_gloo_group() if self.asynchronous else None

    def save(self, step: int, par: ParallelModel, optimizer: torch.optim.Optimizer,
             trainer_state: dict[str, Any]) -> Path | None:
        """Returns the checkpoint's path on rank 0 (for an asynchronous save, where it will be)."""
        self.wait()
        trainer_state = {**trainer_state, "rng": distributed.gather_json(capture_rng_state())}
        if self.fmt == "full":
            return self._save_full(step, par, optimizer, trainer_state)
        return self._save_sharded(step, par, optimizer, trainer_state)

    def _save_full(self, step: int, par: ParallelModel, optimizer: torch.optim.Optimizer,
                   trainer_state: dict[str, Any]) -> Path | None:
        if par.sharded:  # collective
            model_state = gathered_model_state(par.model)
            optimizer_state = gathered_optimizer_state(optimizer)
        path = None
        if distributed.is_main():
            if not par.sharded:  # every rank has the same replica: rank 0's is the checkpoint
                model_state, optimizer_state = model_state_for_saving(par.model), optimizer.state_dict()
            config = self.cfg.to_dict()
            path = write_checkpoint(self.root, step, model_state=model_state, optimizer_state=optimizer_state,
                                    trainer_state={**trainer_state, "config": config}, config=config,
                                    keep_last=self.cfg.checkpoint.keep_last)
        distributed.barrier()
        return path

    def _save_sharded(self, step: int, par: ParallelModel, optimizer: torch.optim.Optimizer,
                      trainer_state: dict[str, Any]) -> Path | None:
        main = distributed.is_main()
        # One temporary directory for all ranks, named by rank 0 (a stale one of a crashed run is removed).
        tmp = self.root / distributed.broadcast_json(new_temp_dir(self.root, step).name if main else None)
        tensors, optimizer_meta = sharded_state(par.model.state_dict(), optimizer.state_dict())
        # A full disk is named with the size needed (a sharded tensor's numel is the whole tensor's)
        needed = tensor_bytes(tensors)
        with space_errors_named(tmp, self.root, step, needed, remove_tmp=main):
            return self._write_sharded(step, tmp, tensors, optimizer_meta, trainer_state, needed)

    def _write_sharded(self, step: int, tmp: Path, tensors: dict[str, torch.Tensor],
                       optimizer_meta: dict[str, Any], trainer_state: dict[str, Any],
                       needed_bytes: int) -> Path | None:
        main = distributed.is_main()
        if main:
            config = self.cfg.to_dict()
            write_json_durably(tmp / OPTIMIZER_JSON, optimizer_meta)
            write_json_durably(tmp / TRAINER_STATE, {**trainer_state, "config": config})
            write_json_durably(tmp / CONFIG, config)
        final = self.root / step_dir_name(step)
        if self.asynchronous:
            done = threading.Event()
            future = save_shards(tmp, tensors, self._group, asynchronous=True)
            if main:  # rank 0's save completes once every rank's files are written
                future.add_done_callback(lambda f: self._finish_in_background(f, tmp, step, done))
            else:
                done.set()
            self._pending = _PendingSave(future, done, step, needed_bytes)
            return final if main else None
        save_shards(tmp, tensors)
        crash_if_requested(step)
        distributed.barrier()  # every rank's shards are on disk
        files = checkpoint_files(tmp)
        rank, world = distributed.rank_and_world()
        mine = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in files[rank::world]}
        sums = distributed.gather_json(mine)
        if main:
            finalize_checkpoint(tmp, self.root, step, self.cfg.checkpoint.keep_last,
                                sha256={k: v for part in sums for k, v in part.items()}, fmt="sharded")
        distributed.barrier()
        return final if main else None

    def _finish_in_background(self, future: Any, tmp: Path, step: int, done: threading.Event) -> None:
        try:
            future.result()
            finalize_checkpoint(tmp, self.root, step, self.cfg.checkpoint.keep_last, fmt="sharded")
        except BaseException as e:  # raised by the next wait(), in the training thread
            self._error = e
            # every rank is done with it: remove the partial directory (on a full disk, give the space back)
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            done.set()

    def wait(self) -> None:
        """Finish the pending asynchronous save, if any; raise what went wrong in it: a full disk as the
        synchronous save names it (where, the space needed and free, the previous checkpoint kept)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.future.result()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            self._error = self._error or e
        pending.done.wait()
        error, self._error = self._error, None
        if error is None:
            return
        if out_of_space(error):
            raise full_disk_error(self.root, pending.step, pending.needed_bytes) from error
        raise CheckpointError(f"writing a checkpoint in the background failed: {type(error).__name__}: "
                              f"{error}") from error

    def close(self) -> None:
        self.wait()


@dataclasses.dataclass
class _PendingSave:
    """An asynchronous save in flight: its future, the event set once rank 0 has finished it (or
    failed), and what a full-disk error names."""

    future: Any
    done: threading.Event
    step: int
    needed_bytes: int


def trainer_state_dict(step: int, counters: dict[str, Any], loader: Any, scaler: torch.amp.GradScaler,
                       tokenizer_fingerprint: str, lr_schedule: dict[str, Any]) -> dict[str, Any]:
    """The JSON part of a checkpoint (the writer adds every rank's RNG state and the config).

    counters: tokens seen, elapsed time... (restored as they are); lr_schedule: where the schedule stands
    (the next step's LR follows from the step and the config; saved so a changed schedule can be told).
    """
    return {
        "step": step,
        **counters,
        "loader": loader.state_dict(),  # holds the epoch too
        "train_data_fingerprint": loader.dataset.content_fingerprint,  # a resume checks it
        "lr_schedule": lr_schedule,
        "grad_scaler": scaler.state_dict(),
        "world_size": distributed.rank_and_world()[1],
        "tokenizer_fingerprint": tokenizer_fingerprint,
    }


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


def _check_same_data(path: Path, state: dict[str, Any], loader: Any) -> None:
    """A resume continues the checkpoint's data stream, so the data must be the one it was trained on:
    the same content fingerprint (the inputs' sha256, preparation options, tokenizer), and the same
    number of training windows, which the saved stream position depends on (checkpoints from before the
    fingerprint have only this)."""
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
    if data.get("sources"):  # a mixture: its sources and weights
        trained_on = " (data.sources " + ", ".join(f"{s['name']} x{s['weight']:g}" for s in data["sources"]) \
            + f", data.on_exhausted {data.get('on_exhausted')})"
    raise CheckpointError(
        f"{path}: the training data differs from the data the run was trained on{trained_on}: "
        f"{what}. A resume continues the same data stream; to train these weights on this data, start a "
        f"new run from them: --run.init_from={path} with another --run.dir")


def gathered_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole weights on the CPU, gathered one tensor at a time; rank 0 keeps them, the others get {}."""
    keep = distributed.is_main()
    state = {}
    for name, tensor in model.state_dict().items():
        whole = gathered(tensor)  # collective: every rank, same order
        if keep:
            state[name] = whole.detach().cpu().clone()
    return state


def gathered_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with whole tensors (on the CPU, rank 0), gathered one at a time."""
    keep = distributed.is_main()
    saved = optimizer.state_dict()  # its per-parameter dicts are the live ones: build new dicts
    state = {}
    for index, per_param in saved["state"].items():
        state[index] = {}
        for name, value in per_param.items():
            whole = gathered(value) if isinstance(value, torch.Tensor) else value  # collective
            state[index][name] = whole.detach().cpu().clone() if isinstance(whole, torch.Tensor) else whole
    return {"state": state if keep else {}, "param_groups": saved["param_groups"]}


def _shaped_like(value: Any, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and is_dtensor(param) and value.shape == param.shape


def _load_tensors(path: Path, par: ParallelModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load the checkpoint's weights into the model; return its optimizer state_dict, shaped like this
    run's optimizer state (sharded like the parameters under fsdp/hsdp)."""
    if par.sharded and checkpoint_format(path) == "sharded":
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def empty_like_saved(index: int, name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
            param = params[index] if index < len(params) else None
            if param is not None and tuple(shape) == tuple(param.shape):
                return torch.empty_like(param, dtype=dtype)  # sharded like its parameter
            return torch.empty(shape, dtype=dtype)

        model_state = par.model.state_dict()
        optimizer_state = load_into_sharded(path, model_state, optimizer, empty_like_saved)
        par.model.load_state_dict(model_state)
        return optimizer_state
    if par.sharded:  # a full checkpoint: one tensor at a time, this rank keeps its shard of each
        stream_model_state(par.model, path)
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def shard(key: str, tensor: torch.Tensor) -> torch.Tensor:
            param = params[int(key.split(".")[1])]
            return shard_like(tensor, param) if _shaped_like(tensor, param) else tensor

        tensors = stream_optimizer_tensors(path, shard)
        return join_optimizer_state(tensors, read_json(path / OPTIMIZER_JSON, CheckpointError), optimizer)
    loaded = read_checkpoint(path, optimizer, checksums=False)  # whole tensors, either format
    load_model_state(par.model, loaded.model_state, path)
    if loaded.optimizer_state is None:
        raise CheckpointError(f"{path}: has no optimizer state")
    return loaded.optimizer_state


def restore_training_state(path: str | Path, par: ParallelModel, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler, loader: Any, tokenizer_fingerprint: str,
                           rank: int) -> dict[str, Any]:
    """Load a checkpoint chosen by choose_checkpoint (which checked its model config and checksums) into
    the live objects, after checking its tokenizer and data; return its trainer state."""
    path = Path(path)
    state = read_json(path / TRAINER_STATE, CheckpointError)
    if state.get("tokenizer_fingerprint") != tokenizer_fingerprint:
        raise CheckpointError(f"{path}: was trained with another tokenizer (fingerprint "
                              f"{str(state.get('tokenizer_fingerprint'))[:12]}..., this run has "
                              f"{tokenizer_fingerprint[:12]}...)")
    _check_same_data(path, state, loader)
    load_optimizer_state(optimizer, _load_tensors(path, par, optimizer), path)
    if state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    try:
        loader.load_state_dict(state["loader"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unusable data-loader state in {TRAINER_STATE} ({e})") from None
    rng = state.get("rng") or []
    if rank < len(rng):  # with more ranks than before, the new ones keep their fresh seeds
        restore_rng_state(rng[rank])
    return state
