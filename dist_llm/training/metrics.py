"""What the trainer reports: MFU against known device peaks, metrics.jsonl, the progress bar, hooks.

MFU = achieved model FLOPs / the device's peak. The peak comes from a table of datasheet numbers (dense,
no sparsity) for the GPU model in use and the precision of the matmuls; for anything not in the table
(CPUs, MPS, unknown GPUs) MFU is reported as null: unknown, never guessed.
Optional TensorBoard and Weights & Biases hooks are created only when enabled and installed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

# (name pattern, bf16/fp16 tensor-core peak, plain fp32 peak) in FLOP/s, dense. Most specific first:
# "A100" must be tried before "A10", "H100 PCIe" before "H100".
PEAK_FLOPS: list[tuple[str, float, float]] = [
    (r"H200", 989e12, 67e12),
    (r"H100.*PCIe", 756e12, 51e12),
    (r"H100.*NVL", 835e12, 60e12),
    (r"H100", 989e12, 67e12),  # SXM
    (r"A100", 312e12, 19.5e12),
    (r"L40S", 362e12, 91.6e12),
    (r"\bL4\b", 121e12, 30.3e12),
    (r"\bA10\b", 125e12, 31.2e12),
    (r"V100", 125e12, 15.7e12),  # no bf16: the fp16 tensor-core peak
]


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Per-device peak FLOP/s for this precision, or None when the device is not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, half, fp32 in PEAK_FLOPS:
        if re.search(pattern, name):
            return fp32 if precision == "fp32" else half
    return None


def mfu(flops_per_token: float, tokens_per_s_per_device: float, peak: float | None) -> float | None:
    return None if peak is None else flops_per_token * tokens_per_s_per_device / peak


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl and forwards records to the hooks."""

    def __init__(self, run_dir: Path, hooks: list[Any] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.hooks = hooks or []
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: v for k, v in record.items() if v is not None or k == "mfu"}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()  # a crash loses at most the line being written
        for hook in self.hooks:
            hook.log(clean)

    def close(self) -> None:
        self._file.close()
        for hook in self.hooks:
            hook.close()


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """On resume, drop records logged after the checkpoint (by the run that crashed), so steps are unique."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash
        if record.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


class TensorBoardHook:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record.get("step", 0))

    def close(self) -> None:
        self.writer.close()


class WandbHook:
    def __init__(self, project: str, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=project, name=Path(run_dir).name, dir=str(run_dir), config=config)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if v is not None}, step=record.get("step"))

    def close(self) -> None:
        self.run.finish()


def make_hooks(tensorboard: bool, wandb: bool, wandb_project: str, run_dir: Path,
               config: dict[str, Any]) -> list[Any]:
    """The enabled hooks whose library is installed; an enabled but missing one is reported, not fatal."""
    hooks: list[Any] = []
    wanted = [("tensorboard", tensorboard, lambda: TensorBoardHook(run_dir)),
              ("wandb", wandb, lambda: WandbHook(wandb_project, run_dir, config))]
    for name, enabled, make in wanted:
        if not enabled:
            continue
        try:
            hooks.append(make())
        except ImportError:
            print(f"log.{name}=true but {name} is not installed (pip install {name}); not logging to it",
                  file=sys.stderr)
    return hooks


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar on the main rank; a do-nothing stand-in elsewhere. Print through console_line while
    it is live: a plain print would leave a frozen copy of the bar behind."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step",
                file=sys.stderr, leave=True)


def console_line(message: str) -> None:
    """print() for the trainer's messages (stdout): above the live progress bar, which tqdm.write clears
    first and redraws after, so the screen keeps one bar below the lines; a plain print without a bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)


def config_summary(cfg: Any) -> str:
    """One line for the screen; the resolved config itself goes to RUN/config.json."""
    m, t = cfg.model, cfg.train
    lengths = (("max_steps", t.max_steps), ("max_tokens", t.max_tokens), ("num_epochs", t.num_epochs))
    length = ", ".join(f"{name} {value:g}" for name, value in lengths if value)
    return (f"model {m.num_layers} layers x {m.d_model} (context {m.context_length}, vocab {m.vocab_size}); "
            f"{length}; {t.global_batch_tokens:,} tokens per step; {t.precision}; "
            f"full config: {Path(cfg.run.dir) / 'config.json'}")


def format_postfix(record: dict[str, Any]) -> dict[str, str]:
    out = {"loss": f"{record['train_loss']:.3f}", "lr": f"{record['lr']:.2e}",
           "tok/s": f"{record['tokens_per_s']:,.0f}"}
    out["mfu"] = "n/a" if record.get("mfu") is None else f"{100 * record['mfu']:.1f}%"
    return out
