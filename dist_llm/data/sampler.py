"""The global sample stream: a resumable, shuffled order of window indices shared by all ranks.

The stream is the concatenation of one random permutation of all windows per epoch, each drawn from
numpy's PCG64 generator seeded with (seed, epoch). Position p of the stream is window
perm_{epoch}[p] for the epoch p falls in. One training step in which every rank draws a micro-batch of
B windows consumes G = world_size * B consecutive positions: rank r takes [pos + r*B, pos + (r+1)*B),
then pos += G. So ranks get disjoint, equal-sized shares, and the stream itself depends on neither the
number of ranks nor the micro-batch size: a run saved with 2 ranks and resumed on 1 rank (with twice
the gradient accumulation, say) reads exactly the windows the 2-rank run would have read next.

Epoch ends: nothing is dropped or padded. A step that straddles an epoch boundary takes the last
windows of epoch e and the first of epoch e+1, so every window is seen exactly once per epoch whatever
world_size and B are. The state is {epoch, position (windows consumed in the current epoch), seed,
num_windows}: small and JSON-able. (The permutation comes from numpy's Generator.permutation; numpy
keeps it stable in practice, but a resume across numpy versions is only as exact as that.)
"""

from __future__ import annotations

from typing import Any

import numpy as np


class GlobalWindowStream:
    """Deterministic shuffled stream of window indices with a resumable position."""

    def __init__(self, num_windows: int, seed: int = 0) -> None:
        if num_windows < 1:
            raise ValueError(f"num_windows must be >= 1, got {num_windows}")
        self.num_windows = int(num_windows)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0  # windows of the current epoch already consumed
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of all windows in `epoch` (cached for the current and next epoch only)."""
        if epoch not in self._perms:
            rng = np.random.default_rng([self.seed, epoch])
            self._perms = {e: p for e, p in self._perms.items() if e >= self.epoch}
            self._perms[epoch] = rng.permutation(self.num_windows)
        return self._perms[epoch]

    def peek(self, offset: int, count: int) -> np.ndarray:
        """Window indices at stream positions [pos + offset, pos + offset + count), without advancing."""
        out = np.empty(count, dtype=np.int64)
        epoch, start = divmod(self.position + offset, self.num_windows)
        epoch += self.epoch
        filled = 0
        while filled < count:
            take = min(count - filled, self.num_windows - start)
            out[filled:filled + take] = self.permutation(epoch)[start:start + take]
            filled += take
            epoch, start = epoch + 1, 0
        return out

    def advance(self, count: int) -> None:
        epochs, self.position = divmod(self.position + count, self.num_windows)
        self.epoch += epochs

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_windows": self.num_windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the saved position. The saved seed wins: resuming means the same stream."""
        missing = [k for k in ("epoch", "position", "seed", "num_windows") if k not in state]
        if missing:
            raise ValueError(f"sampler state is missing {missing}; got keys {sorted(state)}")
        if int(state["num_windows"]) != self.num_windows:
            raise ValueError(
                f"sampler state was saved for {state['num_windows']} windows but the data now has "
                f"{self.num_windows}: the data set or context_length changed, so the position cannot be "
                "resumed")
        if not 0 <= int(state["position"]) < self.num_windows or int(state["epoch"]) < 0:
            raise ValueError(f"sampler state has an invalid position: {state}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perms = {}
