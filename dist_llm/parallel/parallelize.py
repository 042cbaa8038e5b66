"""Data parallelism, activation checkpointing and compile, applied to a model from outside.

Strategies (`dist.strategy`):
  ddp   every rank holds the whole model, its gradients and its optimizer state; gradients are
        all-reduced after backward (DistributedDataParallel). Fastest while the model fits a device.
  fsdp  FSDP2 (`fully_shard`) on every block and on the root: parameters, gradients and optimizer state
        are split over all ranks (ZeRO-3). A block's parameters are all-gathered just before it runs
        and freed after; gradients are reduce-scattered. Per-rank model state is 1/world_size of ddp's.
  hsdp  the same within groups of `dist.shard_group_size` ranks (a node: gathers stay on the fast
        intra-node links), replicated across groups (gradients all-reduced between them): a 2-D mesh.
A single process has nothing to share and runs the model as it is, whatever the strategy.

The model is seen only as "something with a list of blocks in `model.layers`"; what a block computes is
the model's business. The model is built on the meta device (no memory), wrapped, and only then given
memory and initial values: each block's slice of it on each rank (see materialize), so a model larger
than one device never exists whole in one process.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from dist_llm.parallel.shards import copy_full_into, is_dtensor

STRATEGIES = ("ddp", "fsdp", "hsdp")


class ParallelismError(ValueError):
    """The parallel layout cannot be built from this config and world size; names the key."""


@dataclass(frozen=True)
class Parallelism:
    """How to lay a model over the ranks (from the [dist] and [train] sections)."""

    strategy: str = "ddp"
    shard_group_size: int = 0  # hsdp: ranks per sharding group; 0 = processes per node
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    activation_checkpointing: str = "none"  # none | full | selective
    ac_every: int = 2
    compile: bool = False
    param_dtype: torch.dtype | None = None  # fsdp/hsdp mixed precision: the dtype blocks compute in


def effective_strategy(strategy: str, world_size: int) -> str:
    """"single" for one process (nothing to replicate or shard), else the configured strategy."""
    if strategy not in STRATEGIES:
        raise ParallelismError(f"'dist.strategy' must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    return "single" if world_size == 1 else strategy


def hsdp_shape(world_size: int, shard_group_size: int,
               local_world_size: int | None = None) -> tuple[int, int]:
    """(replica groups, ranks per group) of the hsdp mesh; the group size defaults to a node's ranks."""
    size = shard_group_size or local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if size < 1 or world_size % size:
        raise ParallelismError(f"'dist.shard_group_size' ({size}) must divide the world size ({world_size}): "
                               f"hsdp shards within groups of that many ranks and replicates across groups")
    return world_size // size, size


def build_mesh(strategy: str, world_size: int, shard_group_size: int, device_type: str):
    """The DeviceMesh FSDP2 shards over: 1-D for fsdp, (replicate, shard) for hsdp."""
    from torch.distributed.device_mesh import init_device_mesh

    if strategy == "hsdp":
        return init_device_mesh(device_type, hsdp_shape(world_size, shard_group_size),
                                mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))


# ---------------------------------------------------------------- activation checkpointing, compile

def checkpointed_blocks(num_blocks: int, mode: str, every: int) -> list[int]:
    """Which blocks recompute their activations in backward: all ("full"), every k-th ("selective")."""
    if mode == "full":
        return list(range(num_blocks))
    if mode == "selective":
        return list(range(0, num_blocks, every))
    return []


def _checkpoint_forward(forward: Callable, *args, **kwargs):
    # Non-reentrant checkpointing (the form that composes with FSDP2 and torch.compile). The blocks have
    # no dropout, so there is no RNG state to replay: not saving it saves a little work per block.
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False,
                                             **kwargs)


def apply_activation_checkpointing(blocks: nn.ModuleList, mode: str, every: int) -> None:
    """Keep only each chosen block's input for backward and recompute its insides there: the activation
    memory of those blocks drops to one tensor each, for about one more forward pass of compute.

    The block's forward is replaced on the instance, so parameter names (and so checkpoints) stay the
    same, and hooks that FSDP registers on the block still run around the recomputation.
    """
    for i in checkpointed_blocks(len(blocks), mode, every):
        blocks[i].forward = functools.partial(_checkpoint_forward, blocks[i].forward)


def compile_blocks(blocks: nn.ModuleList) -> None:
    """Regional compilation: each block's forward on its own. The blocks are identical, so inductor
    compiles one and reuses it (much faster than the whole model), and FSDP's communication stays
    outside the compiled graphs, where it overlaps with them."""
    for block in blocks:
        block.forward = torch.compile(block.forward)


# ---------------------------------------------------------------- meta-device init, shard by shard

@torch.no_grad()
def materialize(model: nn.Module, device: torch.device) -> None:
    """Give a model built on the meta device real memory and its initial values.

    Every module with `reset_parameters()` draws its values on the CPU, full-size, one module at a time,
    in the order the modules were built: the same draws, in the same order, as building the model on
    the CPU directly. So, with the same seed, the weights are the same under every strategy and world
    size; each rank keeps only its shard of each tensor, and no more than one module's tensors are ever
    whole in memory.
    """
    model.to_empty(device=device)
    for module in model.modules():
        if not callable(getattr(module, "reset_parameters", None)):
            continue
        real = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        if not real:
            continue
        staged = {name: torch.empty(t.shape, dtype=t.dtype) for name, t in real.items()}
        for name, tensor in staged.items():  # reset_parameters() works on CPU stand-ins...
            store = module._parameters if name in module._parameters else module._buffers
            store[name] = nn.Parameter(tensor, requires_grad=False) if store is module._parameters else tensor
        module.reset_parameters()
        for name, original in real.items():  # ...whose values (or this rank's part) go to the real ones
            store = module._parameters if name in module._parameters else module._buffers
            store[name] = original
            copy_full_into(original, staged[name])


# ---------------------------------------------------------------- the parallel model

@dataclass
class ParallelModel:
    """A model laid over the ranks.

    model: the model itself (under fsdp/hsdp its parameters are DTensor shards): state dicts,
      evaluation, generation. train_step_module: what the training step calls (DDP and/or compile
      wrappers around it, or the model itself).
    """

    model: nn.Module
    train_step_module: nn.Module
    strategy: str  # single | ddp | fsdp | hsdp

    @property
    def sharded(self) -> bool:
        return self.strategy in ("fsdp", "hsdp")

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Around forward and backward of a micro-step: with enabled=False (every micro-step but the last
        of an accumulation) gradients only accumulate locally, with no communication."""
        if self.strategy == "ddp" and not enabled:
            with self.train_step_module.no_sync():
                yield
            return
        if self.sharded:
            self.model.set_requires_gradient_sync(enabled)
        yield

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip to max_norm by the global gradient norm (over all shards under fsdp/hsdp: the same value
        ddp computes from whole gradients); return that norm as a plain tensor."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        return norm.full_tensor() if is_dtensor(norm) else norm


def parallelize(build: Callable[[], nn.Module], par: Parallelism, world_size: int,
                device: torch.device, *, shard_one_rank: bool = False) -> ParallelModel:
    """Build the model (on the meta device), apply activation checkpointing, compile and the strategy,
    then materialize it on `device`. Seed the global RNG before: the initial weights come from it.

    shard_one_rank: apply fsdp even to a single process (a 1-rank process group must exist), which
    only a benchmark of fsdp's own overhead wants."""
    strategy = par.strategy if shard_one_rank else effective_strategy(par.strategy, world_size)
    sharded = strategy in ("fsdp", "hsdp")
    with torch.device("meta"):
        model = build()
    blocks = model.layers
    apply_activation_checkpointing(blocks, par.activation_checkpointing, par.ac_every)
    regional = par.compile and (sharded or par.activation_checkpointing != "none")
    if regional:
        compile_blocks(blocks)
    if sharded:
        _fully_shard(model, par, strategy, world_size, device)
    offloaded = par.cpu_offload and sharded
    materialize(model, torch.device("cpu") if offloaded else device)
    if offloaded:
        for module in model.modules():  # parameters live on the CPU; buffers are used where compute runs
            for name, buffer in module.named_buffers(recurse=False):
                module._buffers[name] = buffer.to(device)
    step_module: nn.Module = model
    if par.compile and not regional:
        step_module = torch.compile(model)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device] if device.type == "cuda" else None
        step_module = DistributedDataParallel(step_module, device_ids=device_ids)
    return ParallelModel(model, step_module, strategy)


def _fully_shard(model: nn.Module, par: Parallelism, strategy: str, world_size: int,
                 device: torch.device) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = build_mesh(strategy, world_size, par.shard_group_size, device.type)
    # bf16 parameters for compute, gradients reduced in fp32, the sharded master weights stay fp32.
    precision = MixedPrecisionPolicy(param_dtype=par.param_dtype, reduce_dtype=torch.float32) \
        if par.param_dtype is not None else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if par.cpu_offload else OffloadPolicy()
    blocks = model.layers
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keeping them saves a gather.
        reshard = par.reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=precision, offload_policy=offload,
                    reshard_after_forward=reshard)
    # The root holds the embeddings, the final norm and the head.
    fully_shard(model, mesh=mesh, mp_policy=precision, offload_policy=offload,
                reshard_after_forward=par.reshard_after_forward)
