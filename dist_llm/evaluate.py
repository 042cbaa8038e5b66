"""Loss, perplexity and bits per byte of a trained model over text files or a prepared split (every window).

    python -m dist_llm.evaluate --run runs/small --data heldout.txt more.jsonl
    python -m dist_llm.evaluate --run runs/small --data data/stdlib --split val
    torchrun --nproc_per_node 8 -m dist_llm.evaluate --run-dir runs/small --data data/stdlib --split train

Text and JSONL files are tokenized with the model's tokenizer into a cache (--cache-dir; reused while
the files and the tokenizer are unchanged) and evaluated whole; see dist_llm/data/eval_data.py.

Under torchrun (or srun) each rank takes a disjoint share of the windows (rank r: windows r, r + world,
r + 2*world, ...) and the sums are all-reduced, so the result is the same for any number of ranks.
(Under torchrun spell --run as --run-dir: torchrun reads a bare --run as its own --run-path.)
Rank 0 prints a short table and writes the numbers as JSON, named after the data evaluated (default:
DIR/eval_NAME.json, NAME being the file's stem, or the data dir's name and the split).

Bits per byte follows the trainer's val_bpb: the summed loss in nats over all target tokens, divided by
ln 2 and by the UTF-8 bytes those targets stand for (special tokens count 0 bytes: they are not text).
Unlike loss per token, it does not depend on the tokenizer, so runs with different tokenizers compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dist_llm.checkpoint.pretrained import PretrainedError, load_pretrained
from dist_llm.data import DataError, MemmapTokens
from dist_llm.data.documents import document_ids, separator_id
from dist_llm.data.eval_data import EvalData, is_prepared, resolve_eval_data
from dist_llm.model import TransformerLM
from dist_llm.parallel import distributed
from dist_llm.tokenizer import Tokenizer
from dist_llm.utils.atomic_io import atomic_write_json


def token_byte_lengths(tokenizer: Tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 byte length of every id (0 for special tokens and for ids the tokenizer does not have)."""
    lengths = torch.zeros(vocab_size, dtype=torch.int64)
    specials = {tokenizer.token_id(s) for s in tokenizer.special_tokens}
    for token_id, token_bytes in tokenizer.vocab.items():
        if token_id not in specials and token_id < vocab_size:
            lengths[token_id] = len(token_bytes)
    return lengths


@torch.no_grad()
def window_loss_sums(
    model: torch.nn.Module, dataset: MemmapTokens, indices: np.ndarray, byte_lengths: torch.Tensor, *,
    batch_size: int, device: torch.device, autocast: AbstractContextManager, progress: bool = False,
    separator: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Sums over the windows `indices` of `dataset`: {'loss_sum' (nats), 'tokens', 'bytes', 'windows'}.

    separator: for a model trained with model.doc_masking, the document separator's id: attention then
    stays inside each document, as in training.

    The one evaluation loop: the trainer's periodic validation and this module's CLI both call it.
    The model runs in eval mode under `autocast`; the loss is taken in float32. Its mode is restored.
    """
    byte_lengths = byte_lengths.to(device)
    loss_sum, tokens, num_bytes = 0.0, 0, 0
    batches = range(0, len(indices), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="evaluating", unit="batch", file=sys.stderr)
    was_training = model.training
    model.eval()
    for start in batches:
        windows = torch.from_numpy(dataset.windows(indices[start : start + batch_size])).to(device)
        x, y = windows[:, :-1], windows[:, 1:]
        with autocast:
            # doc_ids only when masking: any model that maps ids to logits can be evaluated otherwise
            logits = model(x) if separator is None else model(x, doc_ids=document_ids(x, separator))
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        loss_sum += loss.item()
        tokens += y.numel()
        num_bytes += int(byte_lengths[y].sum())
    model.train(was_training)
    return {"loss_sum": loss_sum, "tokens": tokens, "bytes": num_bytes, "windows": len(indices)}


def evaluate_windows(
    model: TransformerLM, dataset: MemmapTokens, byte_lengths: torch.Tensor, *, batch_size: int,
    rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32, progress: bool = False, separator: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """window_loss_sums over this rank's share of every window (r, r + world_size, ...); separator: see
    window_loss_sums (a model trained with model.doc_masking is evaluated as it was trained)."""
    device = torch.device(device)
    indices = np.arange(rank, len(dataset), world_size, dtype=np.int64)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    return window_loss_sums(model, dataset, indices, byte_lengths, batch_size=batch_size, device=device,
                            autocast=autocast, progress=progress, separator=separator)


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Loss per token, perplexity and bits per byte from (all-reduced) sums."""
    loss = sums["loss_sum"] / sums["tokens"]
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        "bits_per_byte": sums["loss_sum"] / math.log(2) / sums["bytes"] if sums["bytes"] else float("nan"),
    }


def format_table(result: dict[str, Any]) -> str:
    header = ("data", "windows", "tokens", "loss", "perplexity", "bits/byte")
    row = (result["name"], f"{result['windows']:,}", f"{result['tokens']:,}", f"{result['loss']:.4f}",
           f"{result['perplexity']:.2f}", f"{result['bits_per_byte']:.4f}")  # fmt: skip
    widths = [max(len(h), len(v)) for h, v in zip(header, row, strict=True)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in (header, row))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dist_llm.evaluate", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    where = parser.add_mutually_exclusive_group(required=True)
    # --run-dir: torchrun mistakes a bare --run for an abbreviation of its own --run-path.
    where.add_argument("--run", "--run-dir", dest="run",
                       help="run directory (final model, else its newest complete checkpoint)")
    where.add_argument("--checkpoint", help="checkpoint directory (RUN/checkpoints/step_N)")
    parser.add_argument("--data", required=True, nargs="+",
                        help="text/JSONL files (or directories, globs), or a prepared data dir "
                             "(python -m dist_llm.data.prepare)")
    parser.add_argument("--split", default=None, help="split of a prepared data dir (default: val)")
    parser.add_argument("--text-field", default="text",
                        help="the JSONL field / Parquet column holding each document (default: text)")
    parser.add_argument("--cache-dir", default="data_cache",
                        help="where text inputs are tokenized to (default: data_cache, as the trainer)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    parser.add_argument("--context-length", type=int, default=None,
                        help="window length (default and maximum: the model's context_length)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="compute dtype (bfloat16 autocasts the matmuls; default float32)")
    parser.add_argument("--device", default="auto", help="auto (this rank's GPU > mps > cpu), cpu, cuda, mps")
    parser.add_argument("--out", help="JSON file to write (default: DIR/eval_NAME.json)")
    return parser


def run_evaluation(args: argparse.Namespace, ctx: distributed.DistContext) -> dict[str, Any]:
    model, tokenizer, source = load_pretrained(run=args.run, checkpoint=args.checkpoint, device=ctx.device)
    if source.note and ctx.is_main:
        print(f"note: {source.note}", file=sys.stderr)
    # `is None`, not `or`: --context-length 0 is a value to refuse, not a request for the default
    context_length = model.config.context_length if args.context_length is None else args.context_length
    if not 0 < context_length <= model.config.context_length:
        raise ValueError(
            f"--context-length {context_length} must be in [1, {model.config.context_length}] "
            f"(the model's context_length)"
        )
    found = distributed.on_main_rank(  # rank 0 tokenizes text inputs; every rank then reads the tokens
        lambda: dataclasses.asdict(resolve_eval_data(args.data, args.split, tokenizer, args.cache_dir,
                                                     args.text_field)))
    data = EvalData(**found)
    dataset = MemmapTokens(data.data_dir, data.split, context_length, tokenizer.fingerprint)
    sums = evaluate_windows(
        model, dataset, token_byte_lengths(tokenizer, model.config.vocab_size), batch_size=args.batch_size,
        rank=ctx.rank, world_size=ctx.world_size, device=ctx.device, dtype=getattr(torch, args.dtype),
        progress=ctx.is_main and sys.stderr.isatty(),
        separator=separator_id(dataset.meta) if model.config.doc_masking else None,
    )  # fmt: skip
    keys = ("loss_sum", "tokens", "bytes", "windows")
    sums = dict(zip(keys, distributed.all_reduce_sum([sums[k] for k in keys]), strict=True))
    return {
        "model_dir": str(source.model_dir),
        "name": data.name,
        "data": data.inputs,
        "split": data.split if is_prepared(data.inputs) else None,
        "tokens_dir": data.data_dir,
        "context_length": context_length,
        "windows": int(sums["windows"]),
        "tokens": int(sums["tokens"]),
        "bytes": int(sums["bytes"]),
        **summarize(sums),
        "world_size": ctx.world_size,
        "dtype": args.dtype,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        with distributed.distributed_context(device=args.device, device_option="--device") as ctx:
            result = run_evaluation(args, ctx)
    except (PretrainedError, DataError, distributed.DistributedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ctx.is_main:
        default = Path(args.run or args.checkpoint) / f"eval_{result['name']}.json"
        out = Path(args.out) if args.out else default
        atomic_write_json(out, result)
        print(format_table(result))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
