"""Builders for the after-training tests (generate, evaluate, export): a tiny trained tokenizer and a run
directory holding a small random TransformerLM, made the way the trainer lays them out, so those tests do
not need the trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_llm.checkpoint import write_checkpoint
from dist_llm.checkpoint.pretrained import save_pretrained
from dist_llm.model import ModelConfig, TransformerLM
from dist_llm.tokenizer import Tokenizer, train_bpe

END_OF_TEXT = "<|endoftext|>"
CORPUS = (
    "The quick brown fox jumps over the lazy dog. It's a test; we'll see what they've done.\n"
    "Ça va? Naïve café, señor. 東京は大きい。 Привет, мир! 🙂 emoji 🙂🙂\n"
    "    indented code()   with  spaces\tand tabs\n\n"
    "Numbers 12345 and 3.14159, 2024-01-01.\n"
) * 20


def train_tiny_tokenizer(work_dir: Path, vocab_size: int = 320) -> Tokenizer:
    corpus = work_dir / "corpus.txt"
    corpus.write_text(f"{CORPUS}{END_OF_TEXT}{CORPUS.upper()}", encoding="utf-8")
    vocab, merges = train_bpe(corpus, vocab_size, [END_OF_TEXT], num_workers=1)
    return Tokenizer(vocab, merges, [END_OF_TEXT])


def random_model(vocab_size: int, seed: int = 0, **overrides) -> TransformerLM:
    """A small TransformerLM whose every weight is random, the RMSNorm gains included: with gains all
    ones, swapping ln1 and ln2 in a mapping would go unnoticed."""
    sizes = dict(context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64, rope_theta=500.0)
    sizes.update(overrides)
    torch.manual_seed(seed)
    model = TransformerLM.from_config(ModelConfig(vocab_size=vocab_size, **sizes))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def make_run(run_dir: Path, tokenizer: Tokenizer, model: TransformerLM) -> Path:
    """RUN/model.safetensors, RUN/config.json ("model" key) and RUN/tokenizer/, as the trainer writes them."""
    return save_pretrained(run_dir, model.state_dict(), model.config, tokenizer, {"train": {"seed": 0}})


def make_tiny_run(work: Path) -> tuple[Path, TransformerLM, Tokenizer]:
    """A tiny tokenizer trained in `work`, a random model and the run directory holding both."""
    tokenizer = train_tiny_tokenizer(work)
    model = random_model(tokenizer.vocab_size)
    return make_run(work / "run", tokenizer, model), model, tokenizer


def make_checkpoint(
    run_dir: Path, step: int, model: TransformerLM, complete: bool = True, config: dict | None = None
) -> Path:
    """RUN/checkpoints/step_{step:08d}/ written by the trainer's own checkpoint writer (no optimizer state);
    complete=False removes the COMPLETE marker, as if the write had been interrupted."""
    ckpt = write_checkpoint(
        run_dir / "checkpoints", step, model_state=model.state_dict(), optimizer_state=None,
        trainer_state={"step": step}, config=config or {"model": model.config.to_dict()},
    )  # fmt: skip
    if not complete:
        (ckpt / "COMPLETE").unlink()
    return ckpt
