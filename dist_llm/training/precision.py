"""Mixed precision from outside the model: autocast for the forward pass, a gradient scaler for fp16.

Parameters, gradients and optimizer state stay float32 (the "master weights"); autocast runs the
matmuls in bf16/fp16. fp16 needs loss scaling because small gradients underflow its 5-bit exponent;
bf16 has float32's exponent range and does not.
"""

from __future__ import annotations

import contextlib

import torch

from dist_llm.config import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"'train.precision' fp16 needs a CUDA device (this run uses {device}); "
                         "use bf16 or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Enabled only for fp16; disabled, its scale/unscale/step calls pass straight through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype matmuls run in (None: float32)."""
    return _DTYPES.get(precision)


def bytes_per_value(precision: str) -> int:
    return 4 if precision == "fp32" else 2
