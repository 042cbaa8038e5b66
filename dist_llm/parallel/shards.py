"""Whole tensors and this rank's shard of them: the few conversions that checkpoints, resume and init
need under FSDP2, whose parameters (and so gradients and optimizer state) are DTensors holding dim-0
slices of the whole tensor. On plain tensors every function is the identity or a plain copy."""

from __future__ import annotations

import torch


def is_dtensor(t: object) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_shard(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of `full` that this rank holds of the DTensor `like`: torch.chunk of the sharded dim
    over each mesh dimension that shards it (other mesh dimensions, e.g. hsdp's replicas, hold it all)."""
    from torch.distributed.tensor import Shard

    part = full
    coordinate = like.device_mesh.get_coordinate()
    for mesh_dim, placement in enumerate(like.placements):
        if isinstance(placement, Shard):
            chunks = part.chunk(like.device_mesh.size(mesh_dim), dim=placement.dim)
            index = coordinate[mesh_dim]
            part = chunks[index] if index < len(chunks) else part.narrow(placement.dim, 0, 0)
    local = like.to_local()
    if part.shape != local.shape:
        raise RuntimeError(f"shard of shape {tuple(part.shape)} does not match the local shard "
                           f"{tuple(local.shape)} of a {tuple(like.shape)} tensor")
    return part


@torch.no_grad()
def copy_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into a plain tensor, or into this rank's shard of a DTensor."""
    if is_dtensor(target):
        target.to_local().copy_(local_shard(full, target))
    else:
        target.copy_(full)


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A DTensor sharded as `like`, from a whole tensor every rank has (no communication)."""
    from torch.distributed.tensor import DTensor

    local = local_shard(full, like).to(like.to_local().device)
    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride())


def gathered(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (collective for a DTensor: every rank must call it, in the same order)."""
    return t.full_tensor() if is_dtensor(t) else t
