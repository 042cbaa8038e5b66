"""Disk space and checkpoints: how much a checkpoint needs, and telling a full disk from other errors."""

from __future__ import annotations

import errno
from typing import Any

import torch


def tensor_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state dict: about what writing it takes on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(tensor_bytes(v) for v in state)
    return 0


def out_of_space(e: BaseException) -> bool:
    """Whether an error means a full disk (or quota). safetensors and DCP report it as their own errors
    carrying the OS error's text, not as an OSError."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(s in text for s in ("No space left on device", "Disk quota exceeded", "os error 28"))
