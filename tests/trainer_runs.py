"""Helpers for the trainer tests: a tiny learnable corpus and the arguments of a seconds-long run."""

from __future__ import annotations

import json
import random
from pathlib import Path

from device_under_test import TEST_DEVICE  # cuda under bench/gpu_check.sh: trainer tests on the GPU

WORDS = ["the", "cat", "dog", "bird", "sees", "likes", "finds", "a", "small", "big", "red", "blue", "house",
         "tree", "river", "runs", "sleeps", "and", "with", "under", "over", "quickly", "slowly", "green",
         "old", "new", "sun", "moon"]


def write_tiny_corpus(path: Path, num_docs: int = 400, seed: int = 0) -> Path:
    """A few hundred short documents of a tiny grammar-ish language: learnable, fast to tokenize."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            words = [rng.choice(WORDS[:4]), rng.choice(WORDS[4:7]), rng.choice(WORDS[7:14])]
            words += rng.sample(WORDS, rng.randint(1, 4))
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    path.write_text("\n<|endoftext|>\n".join(docs) + "\n", encoding="utf-8")
    return path


def tiny_train_args(tiny_data: dict[str, Path], run_dir: Path, *extra: str) -> list[str]:
    """Command-line arguments for a seconds-long run of a very small model on the tiny corpus."""
    return [
        f"--run.dir={run_dir}", f"--run.cache_dir={tiny_data['cache']}",
        f"--data.inputs={tiny_data['corpus']}", "--data.val_fraction=0.1", "--model.vocab_size=320",
        "--model.context_length=32", "--model.d_model=32", "--model.num_layers=2", "--model.num_heads=2",
        "--model.d_ff=64", "--train.micro_batch_size=4", "--train.global_batch_tokens=256",
        "--train.max_steps=8", "--optim.warmup_steps=2", "--optim.max_lr=3e-3", "--eval.interval=4",
        "--eval.num_windows=8", "--eval.batch_size=4", "--eval.sample_tokens=8", "--log.interval=1",
        "--log.progress_bar=false", "--tokenizer.num_workers=1", "--data.num_workers=1",
        f"--dist.device={TEST_DEVICE}", *extra,
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged train loss."""
    return {r["step"]: r["train_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r}


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


def flip_tensor_byte(path: Path, offset: int = 5) -> None:
    """Invert one byte of a safetensors file's tensor data, keeping its size and header intact (bit rot,
    a bad disk sector): only a checksum of the content can tell."""
    import struct

    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 + header_len + offset] ^= 0xFF
    path.write_bytes(bytes(data))
