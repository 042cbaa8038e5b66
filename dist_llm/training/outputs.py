"""What a run leaves behind besides checkpoints: the run directory, the final model, a sample, loss.png."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dist_llm.checkpoint import unwrap_model
from dist_llm.config import EvalSection
from dist_llm.data import DOCUMENT_SEPARATOR
from dist_llm.tokenizer import Tokenizer
from dist_llm.utils.atomic_io import atomic_write, atomic_write_json

PREVIOUS_OUTPUTS = ("checkpoints", "metrics.jsonl", "model.safetensors", "loss.png", "tokenizer",
                    "config.json")


def set_aside_previous_run(run_dir: Path) -> Path | None:
    """A fresh start in a used run dir moves the old outputs into RUN/replaced-<time>/ (nothing is lost,
    and --resume auto cannot pick up checkpoints of the old run)."""
    old = [run_dir / name for name in PREVIOUS_OUTPUTS if (run_dir / name).exists()]
    if not old:
        return None
    target = run_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir()
    for path in old:
        os.replace(path, target / path.name)
    return target


def write_final_model(run_dir: Path, model_state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """RUN/model.safetensors (float32, plain names) + config.json, each written atomically (RUN/tokenizer/
    is written when the run starts). model_state: whole tensors (see training.state for gathering them)."""
    tensors = {k: v.float() for k, v in model_state.items()}
    atomic_write(run_dir / "model.safetensors",
                 lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_json(run_dir / "config.json", config)


def sample_text(model: torch.nn.Module, tokenizer: Tokenizer, cfg: EvalSection, seed: int) -> str:
    from dist_llm.model import generate

    bare = unwrap_model(model)
    eos = tokenizer.token_id(DOCUMENT_SEPARATOR) if DOCUMENT_SEPARATOR in tokenizer.special_tokens else None
    prompt = tokenizer.encode(cfg.sample_prompt) or ([eos] if eos is not None else [0])
    new = generate(bare, prompt, cfg.sample_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                   eos_id=eos, seed=seed)
    # The embedding table may be larger than the tokenizer's vocabulary (model.vocab_size is an upper
    # bound); an undertrained model can still sample those unused ids, which decode to nothing.
    return cfg.sample_prompt + tokenizer.decode([i for i in new if i in tokenizer.vocab])


def references_line(references: dict[str, float]) -> str:
    """The reference figures (training/references.py) as printed before training starts."""
    return (f"references on the validation text: unigram {references['unigram_bpb']:.2f} bpb (token "
            f"frequencies), gzip -9 {references['gzip_bpb']:.2f} bpb (repeats)")


def summary_line(step: int, last_eval: dict[str, float], references: dict[str, float]) -> str:
    """The end of a run in one line: the last validation figures next to the references."""
    refs = f" (unigram {references['unigram_bpb']:.2f}, gzip {references['gzip_bpb']:.2f})"
    return (f"done: step {step}, val loss {last_eval['val_loss']:.3f}, val bpb {last_eval['val_bpb']:.3f}"
            f"{refs}")


def write_loss_plot(run_dir: Path) -> str:
    """Draw RUN/loss.png. The plot is a convenience at the end of the run: a missing matplotlib, or
    metrics.jsonl missing or with nothing to plot (removed or emptied by hand mid-run), is a message that
    says so, never a crash after the training itself is done."""
    from dist_llm.plot import PlotError, plot_runs

    try:
        return f"loss curve: {plot_runs([run_dir], run_dir / 'loss.png')}"
    except (ImportError, PlotError) as e:
        return f"loss curve: skipped ({e})"
