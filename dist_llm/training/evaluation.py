"""Validation: mean loss over a fixed set of windows, perplexity and bits per byte, over all ranks.

The windows are spread evenly over the validation split and fixed for the whole run (so successive
evaluations are comparable) and split between ranks. Bits per byte divides the summed loss (in nats) by
the UTF-8 bytes the target tokens stand for, counted exactly from the vocabulary's byte lengths (special
tokens count 0 bytes: they are not text); that makes runs with different tokenizers comparable.

A mixture is evaluated source by source, eval.num_windows windows of each: val_loss/<name> and
val_bpb/<name> per source, and under val_loss, val_bpb the mean over the sources weighted by their
mixture weights (the loss of the training mix, not of whichever source has the most windows).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import numpy as np
import torch

from dist_llm.evaluate import token_byte_lengths, window_loss_sums
from dist_llm.parallel import distributed
from dist_llm.tokenizer import Tokenizer


class ValidationWindows:
    def __init__(self, dataset, num_windows: int, rank: int, world_size: int, tokenizer: Tokenizer,
                 vocab_size: int, separator: int | None = None) -> None:
        count = min(num_windows, len(dataset))
        chosen = np.unique(np.linspace(0, len(dataset) - 1, num=count).round().astype(np.int64))
        self.dataset = dataset
        self.all_indices = chosen
        self.indices = chosen[rank::world_size]
        self.total_windows = len(chosen)
        self.byte_lengths = token_byte_lengths(tokenizer, vocab_size)
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.separator = separator  # model.doc_masking: attention within documents, as in training
        # The most windows any rank has: under fsdp/hsdp every forward pass gathers parameters from all
        # ranks, so every rank must run as many batches as the busiest one.
        self.most_per_rank = -(-len(chosen) // world_size)

    def evaluate(self, model: torch.nn.Module, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager, lockstep: bool = False) -> dict[str, float]:
        """{'val_loss', 'val_ppl', 'val_bpb'}; every rank must call it (it all-reduces).

        lockstep: every rank runs the same number of forward passes (needed under fsdp/hsdp)."""
        sums = window_loss_sums(model, self.dataset, self.indices, self.byte_lengths, batch_size=batch_size,
                                device=device, autocast=autocast, separator=self.separator)
        if lockstep:
            self._idle_batches(model, batch_size, device, autocast)
        loss_sum, tokens, num_bytes = distributed.all_reduce_sum([sums["loss_sum"], sums["tokens"],
                                                                  sums["bytes"]])
        val_loss = loss_sum / tokens
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)),
                "val_bpb": loss_sum / max(num_bytes, 1) / math.log(2)}

    def references(self, train_data) -> dict[str, float]:
        """{'unigram_bpb', 'gzip_bpb'}: simple predictors scored on the text of all the windows (every
        rank's), the unigram fit on `train_data` (see references.py). Local: no collective."""
        from dist_llm.training.references import reference_bpb

        specials = {self.tokenizer.token_id(s) for s in self.tokenizer.special_tokens}
        return reference_bpb(train_data.files, self.dataset.windows(self.all_indices), self.tokenizer.vocab,
                             specials, self.vocab_size)

    @torch.no_grad()
    def _idle_batches(self, model: torch.nn.Module, batch_size: int, device: torch.device,
                      autocast: AbstractContextManager) -> None:
        """Forward passes whose results are dropped, so that this rank joins as many parameter gathers
        as the rank with the most windows."""
        missing = -(-self.most_per_rank // batch_size) - (-(-len(self.indices) // batch_size))
        if missing <= 0:
            return
        x = torch.from_numpy(self.dataset.windows(np.zeros(1, dtype=np.int64))[:, :-1]).to(device)
        was_training = model.training
        model.eval()
        for _ in range(missing):
            with autocast:
                model(x)
        model.train(was_training)


class MixtureValidation:
    """ValidationWindows per source of a mixture (each in lockstep on its own), summarised by weight."""

    def __init__(self, mixture, num_windows: int, rank: int, world_size: int, tokenizer: Tokenizer,
                 vocab_size: int, separator: int | None = None) -> None:
        self.per_source = {name: ValidationWindows(ds, num_windows, rank, world_size, tokenizer, vocab_size,
                                                   separator) for name, ds in mixture.sources.items()}
        total = sum(mixture.weights.values())
        self.shares = {name: w / total for name, w in mixture.weights.items()}

    def evaluate(self, model: torch.nn.Module, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager, lockstep: bool = False) -> dict[str, float]:
        """The weighted val_loss, val_ppl, val_bpb and each source's val_loss/<name>, val_bpb/<name>."""
        out = {"val_loss": 0.0, "val_ppl": 0.0, "val_bpb": 0.0}
        for name, windows in self.per_source.items():
            result = windows.evaluate(model, batch_size, device, autocast, lockstep)
            out[f"val_loss/{name}"], out[f"val_bpb/{name}"] = result["val_loss"], result["val_bpb"]
            out["val_loss"] += self.shares[name] * result["val_loss"]
            out["val_bpb"] += self.shares[name] * result["val_bpb"]
        out["val_ppl"] = math.exp(min(out["val_loss"], 700.0))
        return out

    def references(self, train_data) -> dict[str, float]:
        """Each source's references (unigram_bpb/<name>, gzip_bpb/<name>) and their weighted means, as
        val_bpb is weighted."""
        out = {"unigram_bpb": 0.0, "gzip_bpb": 0.0}
        for name, windows in self.per_source.items():
            for key, value in windows.references(train_data.sources[name]).items():
                out[f"{key}/{name}"] = value
                out[key] += self.shares[name] * value
        return out


def validation_windows(val_data, num_windows: int, rank: int, world_size: int, tokenizer: Tokenizer,
                       vocab_size: int, separator: int | None = None
                       ) -> ValidationWindows | MixtureValidation:
    """The trainer's validation set: one split's windows, or each source's for a mixture."""
    from dist_llm.data.mixture import MixtureTokens

    kind = MixtureValidation if isinstance(val_data, MixtureTokens) else ValidationWindows
    return kind(val_data, num_windows, rank, world_size, tokenizer, vocab_size, separator)


def format_eval(result: dict[str, float]) -> str:
    """One progress line: the (weighted) loss, perplexity and bpb, then each source's loss and bpb."""
    line = f"val_loss {result['val_loss']:.4f}  ppl {result['val_ppl']:.2f}  bpb {result['val_bpb']:.4f}"
    sources = [key.split("/", 1)[1] for key in result if key.startswith("val_loss/")]
    if sources:
        line += "  |  " + "  ".join(f"{name}: loss {result[f'val_loss/{name}']:.4f} "
                                    f"bpb {result[f'val_bpb/{name}']:.4f}" for name in sources)
    return line
