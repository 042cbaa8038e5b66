"""What the checkpoint manifest's SHA-256 checksums cost, against the checkpoint write and read themselves.

    python bench/bench_checkpoint.py                      # GPT-2-small model + AdamW state (~1.5 GB)
    python bench/bench_checkpoint.py --config tiny --rounds 5

A checkpoint of the model's weights and a real AdamW state (one step taken) is written with
dist_llm.checkpoint.write_checkpoint, as the trainer writes it, and read back with read_checkpoint,
as a resume does. Baselines, measured in the same run:
- write: the same write_checkpoint call minus the time to hash its files alone (write_checkpoint
  always hashes, so the unhashed write is what remains);
- read: read_checkpoint(checksums=False) and loading the result into the model and the optimizer,
  what every rank but rank 0 runs on a resume, against the same with checksums=True, what rank 0 runs
  (safetensors maps the files, so the bytes are only read by the loading).
Best of --rounds each. The files sit in the page cache, as right after a write; a resume that reads
them cold from disk pays the disk time in both cases alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: sibling bench modules
from bench_model import CONFIGS  # noqa: E402

from dist_llm.checkpoint import model_state_for_saving, read_checkpoint, write_checkpoint  # noqa: E402
from dist_llm.model import TransformerLM  # noqa: E402
from dist_llm.utils.file_hash import file_sha256  # noqa: E402


def model_and_optimizer(config: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model and an AdamW whose state holds both moments for every parameter, as in training."""
    torch.manual_seed(0)
    model = TransformerLM.from_config(CONFIGS[config])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    return model, optimizer


def best_time(fn, rounds: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2-small", choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    model, optimizer = model_and_optimizer(args.config)
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        def write() -> Path:
            return write_checkpoint(root, 1, model_state=model_state_for_saving(model),
                                    optimizer_state=optimizer.state_dict(), trainer_state={"step": 1},
                                    config={}, keep_last=1)

        path = write()
        files = [p for p in sorted(path.iterdir()) if p.name != "COMPLETE"]
        size_gb = sum(p.stat().st_size for p in files) / 1e9
        t_write = best_time(write, args.rounds)
        t_hash = best_time(lambda: [file_sha256(p) for p in files], args.rounds)
        def resume(checksums: bool) -> None:
            loaded = read_checkpoint(path, optimizer, checksums=checksums)
            model.load_state_dict(loaded.model_state)
            optimizer.load_state_dict(loaded.optimizer_state)

        t_read = best_time(lambda: resume(checksums=False), args.rounds)
        t_read_checked = best_time(lambda: resume(checksums=True), args.rounds)

    print(f"checkpoint: {args.config}, {size_gb:.2f} GB (model + AdamW state) | torch {torch.__version__} | "
          f"CPU threads {torch.get_num_threads()} | best of {args.rounds}")
    print()
    print("| | without checksums (s) | with checksums (s) | checksums add |")
    print("|---|---|---|---|")
    print(f"| write | {t_write - t_hash:.2f} | {t_write:.2f} | {t_hash / (t_write - t_hash):.0%} |")
    read_added = (t_read_checked - t_read) / t_read
    print(f"| read (resume) | {t_read:.2f} | {t_read_checked:.2f} | {read_added:.0%} |")
    print(f"\nhashing alone: {t_hash:.2f} s, {size_gb / t_hash:.2f} GB/s")


if __name__ == "__main__":
    main()
