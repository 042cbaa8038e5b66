"""Device lookup shared by the data loader and the launcher: a requested device must exist here.

Asking for 'cuda' on a machine without CUDA raises, naming the device, instead of silently running on
the CPU (a run that quietly trains 100x slower is worse than one that refuses to start).
"""

from __future__ import annotations

import torch


class DeviceUnavailableError(ValueError, RuntimeError):
    """The requested device does not exist or is not usable here. Both a ValueError (a bad value for a
    device option) and a RuntimeError, which torch raises for an unavailable device and which code written
    against torch catches."""


def resolve_device(device: str | torch.device) -> torch.device:
    """torch.device for `device`, raising when it does not exist here (never a silent CPU fallback)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceUnavailableError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise DeviceUnavailableError(f"device {device!r} requested but only {n} CUDA devices exist")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} requested but MPS is not available on this machine")
        return dev
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise DeviceUnavailableError(f"device {device!r} is not usable here: {e}") from None
    return dev
