"""Matmul peak of the current device, measured, plus the datasheet peak for known GPUs.

MFU quoted against a datasheet number says little on a CPU or a throttled GPU; quoting it against the
best matmul this machine actually sustains (at the dtype the benchmark uses) shows how close the model's
training step comes to what the hardware gives a single large GEMM.

    python bench/peak_flops.py --dtype bf16
"""

from __future__ import annotations

import argparse
import time

import torch

# Dense (no sparsity) tensor-core peaks for bf16/fp16, in FLOP/s, from the vendors' datasheets.
DATASHEET_BF16_PEAKS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM; checked after the PCIe/NVL variants
    ("A100", 312e12),
]


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> tuple[str, float] | None:
    """(GPU name, bf16/fp16 dense peak) when the GPU is one we know and the dtype uses tensor cores."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in DATASHEET_BF16_PEAKS:
        if key in name:
            return name, peak
    return None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer around it measures the work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int | None = None, min_seconds: float = 1.0
) -> float:
    """Best FLOP/s of a square size x size matmul over repeated timed bursts."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2.0 * size**3
    for _ in range(3):  # warm up kernels, clocks and the allocator
        a @ b
    sync(device)
    best, spent, iters = 0.0, 0.0, 1
    while spent < min_seconds:
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = max(best, flops * iters / elapsed)
        iters = min(iters * 2, 64)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    peak = measured_matmul_peak(device, dtype)
    print(f"measured {args.dtype} matmul peak on {device}: {peak / 1e12:.3f} TFLOP/s")
    known = datasheet_peak(device, dtype)
    if known:
        print(f"datasheet dense peak for {known[0]}: {known[1] / 1e12:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
