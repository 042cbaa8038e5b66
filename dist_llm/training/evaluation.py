"""Validation: mean loss over a fixed set of windows, perplexity and bits per byte, over all ranks.

The windows are spread evenly over the validation split and fixed for the whole run (so successive
evaluations are comparable) and split between ranks. Bits per byte divides the summed loss (in nats) by
the UTF-8 bytes the target tokens stand for, counted exactly from the vocabulary's byte lengths (special
tokens count 0 bytes: they are not text); that makes runs with different tokenizers comparable.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import numpy as np
import torch
import torch.nn.functional as F

from dist_llm import distributed
from dist_llm.evaluate import token_byte_lengths
from dist_llm.tokenizer import Tokenizer


class ValidationWindows:
    def __init__(self, dataset, num_windows: int, rank: int, world_size: int, tokenizer: Tokenizer,
                 vocab_size: int) -> None:
        count = min(num_windows, len(dataset))
        chosen = np.unique(np.linspace(0, len(dataset) - 1, num=count).round().astype(np.int64))
        self.dataset = dataset
        self.indices = chosen[rank::world_size]
        self.total_windows = len(chosen)
        byte_len = token_byte_lengths(tokenizer, vocab_size).numpy()
        targets = dataset.windows(self.indices)[:, 1:] if len(self.indices) else np.zeros((0, 1), np.int64)
        self.num_bytes = int(byte_len[targets].sum())  # this rank's share; summed over ranks in evaluate

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batch_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> dict[str, float]:
        """{'val_loss', 'val_ppl', 'val_bpb'}; every rank must call it (it all-reduces)."""
        was_training = model.training
        model.eval()
        loss_sum, tokens = 0.0, 0
        for start in range(0, len(self.indices), batch_size):
            batch = self.dataset.windows(self.indices[start : start + batch_size])
            windows = torch.from_numpy(batch).to(device)
            x, y = windows[:, :-1], windows[:, 1:]
            with autocast:
                logits = model(x)
            flat_logits = logits.float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(flat_logits, y.reshape(-1), reduction="sum")
            loss_sum += loss.item()
            tokens += y.numel()
        model.train(was_training)
        loss_sum, tokens, num_bytes = distributed.all_reduce_sum([loss_sum, tokens, self.num_bytes])
        val_loss = loss_sum / tokens
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)),
                "val_bpb": loss_sum / max(num_bytes, 1) / math.log(2)}
