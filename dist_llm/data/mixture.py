"""Weighted mixtures of prepared sources: one window index space and a deterministic blended stream.

A mixture of sources d = 0..D-1 (each a prepared split, `MemmapTokens`) with weights w_d is seen by the
loader as one dataset whose window i belongs to the source whose range [offset_d, offset_d + n_d) holds
it. Which source each position of the training stream draws from is fixed by a deterministic
interleaving, not by random draws (Megatron's and OLMo's "blend"): source d's k-th window is due at the
virtual time (k + 1/2) / w_d, and the stream takes the windows of all sources in the order of their due
times (ties: the lower source index first). This is the Sainte-Lague divisor method: after any p
positions, source d has been drawn within one window of p * w_d / sum(w), so a 3:1 mixture is 3:1 over
every stretch of a few windows, not only on average. Within a source, windows come from that source's
own `GlobalWindowStream` (a fresh permutation per epoch of the source, seeded from the run seed and the
source's name), so a source that runs out repeats, reshuffled.

The order is a function of how many windows each source has given so far, so the state is small: the
stream position and each source's sampler state. Like the one-source stream it depends neither on the
number of ranks nor on the micro-batch size, so a resume on another number of ranks continues it exactly.

on_exhausted = "stop": instead of repeating, the data ends just before any source would start its second
epoch; `limit` is that many stream positions, and the trainer ends the run at the last full step within
it (reading past it is an error, never a silent repeat).

An "epoch" of the mixture, for the trainer's epoch counting and `train.num_epochs`, is as many windows as
all the sources hold together.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from dist_llm.data.sampler import GlobalWindowStream
from dist_llm.data.sources import DataError


def source_seed(seed: int, name: str) -> int:
    """A 32-bit seed for one source's permutations: sources of equal size are shuffled differently."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:4], "little")


def _due_times(first: np.ndarray, count: int, weights: np.ndarray) -> np.ndarray:
    """(D, count) virtual times of each source's next `count` windows after its first[d] drawn ones."""
    k = first[:, None] + np.arange(count, dtype=np.int64)[None, :]
    return (k + 0.5) / weights[:, None]


class MixtureStream:
    """The blended stream of global window indices; the interface of `GlobalWindowStream`."""

    def __init__(self, names: list[str], sizes: list[int], weights: list[float], seed: int = 0,
                 on_exhausted: str = "repeat") -> None:
        if not (len(names) == len(sizes) == len(weights)) or not names:
            raise ValueError("a mixture needs one size and one weight per source, and at least one source")
        if on_exhausted not in ("repeat", "stop"):
            raise ValueError(f"on_exhausted must be repeat or stop, got {on_exhausted!r}")
        self.names = list(names)
        self.weights = np.asarray(weights, dtype=np.float64)
        if not np.all(self.weights > 0):
            raise ValueError(f"mixture weights must be positive, got {weights}")
        self.seed, self.on_exhausted = int(seed), on_exhausted
        self.streams = [GlobalWindowStream(n, source_seed(seed, name))
                        for name, n in zip(names, sizes, strict=True)]
        self.sizes = np.array([s.num_windows for s in self.streams], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.num_windows = int(self.sizes.sum())
        self.position = 0
        self.limit = self._stop_limit() if on_exhausted == "stop" else None

    @property
    def epoch(self) -> int:
        return self.position // self.num_windows

    def drawn(self) -> np.ndarray:
        """Windows each source has given so far (over all its epochs)."""
        return np.array([s.epoch * s.num_windows + s.position for s in self.streams], dtype=np.int64)

    def schedule(self, count: int) -> np.ndarray:
        """The source of each of the next `count` stream positions (the first `count` due windows)."""
        num = len(self.streams)
        times = _due_times(self.drawn(), count, self.weights).ravel()
        source = np.repeat(np.arange(num), count)
        return source[np.lexsort((source, times))[:count]]

    def _stop_limit(self) -> int:
        """Stream positions before the first window that would start some source's second epoch."""
        first_over = (self.sizes + 0.5) / self.weights  # due time of each source's (n_d + 1)-th window
        stop_source = int(np.argmin(first_over))  # the lowest index among ties, as in schedule()
        deadline = first_over[stop_source]
        total = 0
        for d, w in enumerate(self.weights):  # windows of d due before the deadline (ties: d < stop_source)
            k = max(0, int(np.ceil(deadline * w - 0.5)) - 1)
            while (k + 0.5) / w < deadline or ((k + 0.5) / w == deadline and d < stop_source):
                k += 1
            while k > 0 and not ((k - 0.5) / w < deadline or ((k - 0.5) / w == deadline and d < stop_source)):
                k -= 1
            total += k
        return total

    def _split(self, offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(sources of positions [pos + offset, pos + offset + count), windows each source gives before)."""
        if self.limit is not None and self.position + offset + count > self.limit:
            exhausted = self.names[int(np.argmin((self.sizes + 0.5) / self.weights))]
            raise DataError(f"data source {exhausted!r} is exhausted after {self.limit} windows of the "
                            "mixture and data.on_exhausted is \"stop\"; set it to \"repeat\" to draw its "
                            "windows again")
        sources = self.schedule(offset + count)
        before = np.bincount(sources[:offset], minlength=len(self.streams))
        return sources[offset:], before

    def peek(self, offset: int, count: int) -> np.ndarray:
        """Global window indices at stream positions [pos + offset, pos + offset + count), not advancing."""
        sources, before = self._split(offset, count)
        out = np.empty(count, dtype=np.int64)
        for d, stream in enumerate(self.streams):
            mask = sources == d
            if mask.any():
                out[mask] = stream.peek(int(before[d]), int(mask.sum())) + self.offsets[d]
        return out

    def advance(self, count: int) -> None:
        sources, _ = self._split(0, count)
        for d, taken in enumerate(np.bincount(sources, minlength=len(self.streams))):
            self.streams[d].advance(int(taken))
        self.position += count

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch, "num_windows": self.num_windows,
                "seed": self.seed, "on_exhausted": self.on_exhausted,
                "sources": [{"name": name, "weight": float(w), **s.state_dict()}
                            for name, w, s in zip(self.names, self.weights, self.streams, strict=True)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the saved position: the same sources, sizes and weights, each at its saved place."""
        missing = [k for k in ("position", "num_windows", "seed", "sources") if k not in state]
        if missing:
            raise ValueError(f"mixture sampler state is missing {missing}; got keys {sorted(state)} (a "
                             "checkpoint of a one-source run cannot continue as a mixture)")
        saved = [(s.get("name"), s.get("weight"), s.get("num_windows")) for s in state["sources"]]
        now = list(zip(self.names, self.weights.tolist(), self.sizes.tolist(), strict=True))
        if saved != now:
            raise ValueError(f"the mixture changed: saved (name, weight, windows) {saved}, now {now}; a "
                             "resume continues the same stream")
        for stream, source in zip(self.streams, state["sources"], strict=True):
            stream.load_state_dict(source)
        self.seed, self.position = int(state["seed"]), int(state["position"])
        given = int(self.drawn().sum())
        if given != self.position:
            raise ValueError(f"mixture sampler state is inconsistent: its sources gave {given} windows but "
                             f"its position is {self.position}")


class MixtureTokens:
    """Several prepared splits (one per source) as one dataset: window offset_d + i is window i of d."""

    def __init__(self, sources: dict[str, Any], weights: dict[str, float],
                 on_exhausted: str = "repeat") -> None:
        self.sources = dict(sources)
        self.weights = {name: float(weights[name]) for name in self.sources}
        self.on_exhausted = on_exhausted
        self.names = list(self.sources)
        sizes = np.array([len(ds) for ds in self.sources.values()], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.num_tokens = sum(int(ds.num_tokens) for ds in self.sources.values())

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def make_stream(self, seed: int) -> MixtureStream:
        return MixtureStream(self.names, [len(ds) for ds in self.sources.values()],
                             [self.weights[n] for n in self.names], seed, self.on_exhausted)

    @property
    def limit(self) -> int | None:
        """Windows the training stream can give (None: unlimited, sources repeat)."""
        return self.make_stream(0).limit

    @property
    def content_fingerprint(self) -> str:
        """The sources' fingerprints with their names and weights and the exhaustion rule."""
        identity = [[n, self.weights[n], ds.content_fingerprint] for n, ds in self.sources.items()]
        return hashlib.sha256(json.dumps([identity, self.on_exhausted]).encode()).hexdigest()

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """Windows for global indices, gathered source by source, in the order asked."""
        indices = np.asarray(indices, dtype=np.int64)
        source = np.searchsorted(self.offsets, indices, side="right") - 1
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)}) for the mixture {self.names}")
        first = next(iter(self.sources.values()))
        out = np.empty((len(indices), first.context_length + 1), dtype=np.int64)
        for d, ds in enumerate(self.sources.values()):
            mask = source == d
            if mask.any():
                out[mask] = ds.windows(indices[mask] - self.offsets[d])
        return out

    def describe(self) -> str:
        total = sum(self.weights.values())
        return ", ".join(f"{n} ({ds.num_tokens:,} tokens, {self.weights[n] / total:.0%} of windows)"
                         for n, ds in self.sources.items())
