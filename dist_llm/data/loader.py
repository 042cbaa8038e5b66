"""Training batches: the sharded, resumable loader and the quick random `get_batch`.

Both gather all windows of a batch with one vectorised numpy index into the memmap and move them to
the device in one copy (pinned and non-blocking on CUDA, so the copy overlaps with compute).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dist_llm.data.memmap_tokens import MemmapTokens
from dist_llm.data.mixture import MixtureTokens
from dist_llm.data.sampler import GlobalWindowStream
from dist_llm.utils.devices import resolve_device


def _to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) LongTensors from an int64 (B, T+1) window array: one host-to-device copy."""
    t = torch.from_numpy(windows)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        t = t.to(device)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class ShardedBatchLoader:
    """Micro-batches for one rank of a data-parallel run, from the shared global window stream.

    Rank r of world_size takes windows [pos + r*B, pos + (r+1)*B) of the stream per call and every rank
    advances pos by world_size*B (see sampler.py), so all ranks must call next_batch equally often.
    A `MixtureTokens` dataset brings its own blended stream (see mixture.py), with the same interface.
    """

    def __init__(self, dataset: MemmapTokens | MixtureTokens, micro_batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.device = resolve_device(device)
        self.stream = dataset.make_stream(seed) if isinstance(dataset, MixtureTokens) \
            else GlobalWindowStream(len(dataset), seed)

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def next_indices(self) -> np.ndarray:
        """This rank's window indices for the next step, advancing the shared position."""
        b = self.micro_batch_size
        indices = self.stream.peek(self.rank * b, b)
        self.stream.advance(self.world_size * b)
        return indices

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of shape (micro_batch_size, context_length), int64, on the loader's device."""
        return _to_device(self.dataset.windows(self.next_indices()), self.device)

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


def get_batch(tokens: np.ndarray | torch.Tensor, batch_size: int, context_length: int,
              device: str | torch.device = "cpu", rng: np.random.Generator | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size windows at uniformly random starts of a 1-D token array: x and y = x shifted by one."""
    dev = resolve_device(device)
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
    if len(tokens) < context_length + 1:
        raise ValueError(f"tokens has {len(tokens)} entries, fewer than context_length + 1 = "
                         f"{context_length + 1}")
    rng = np.random.default_rng() if rng is None else rng
    starts = rng.integers(0, len(tokens) - context_length, size=batch_size)
    windows = tokens[starts[:, None] + np.arange(context_length + 1)].astype(np.int64)
    return _to_device(windows, dev)
