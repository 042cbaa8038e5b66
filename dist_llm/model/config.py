"""ModelConfig: the handful of numbers that define a TransformerLM, validated up front.

Validation lives here (not deep inside the modules) so that a bad config file fails with a message
naming the field, before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTN_IMPLS = ("sdpa", "reference")
# Keys that choose how the model is computed, not what it computes: the same weights fit either way.
IMPLEMENTATION_KEYS = ("attn_impl", "fused_ops")
# Keys that choose how the model is trained, not what its weights are: the same weights load and run
# either way. doc_masking only limits which tokens of a packed window attend to each other. doc_positions
# restarts RoPE positions at each document; RoPE scores depend only on the difference of two positions,
# and under doc_masking only tokens of one document meet, so that difference is the same either way.
TRAINING_KEYS = ("doc_masking", "doc_positions")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    attn_impl: str = "sdpa"  # "sdpa" (fused torch kernel, default) or "reference" (from-scratch softmax)
    # True: embedding, RMSNorm, SiLU, RoPE through torch's kernels (F.embedding, F.rms_norm or on a CPU a
    # hand-derived backward, F.silu, a complex multiply), the same math in fewer passes over memory;
    # False: the from-scratch formulas in layers.py / rope.py.
    fused_ops: bool = True
    # True: training windows attend only within each document (forward's doc_ids, dist_llm/data/documents.py).
    # The model itself applies the mask whenever doc_ids is given; this key tells the trainer to give it.
    doc_masking: bool = False
    # True: with doc_ids, RoPE positions restart at 0 at each document's first token (needs doc_masking).
    doc_positions: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"ModelConfig.{name} must be a positive number, got {value!r}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} must be divisible by ModelConfig.num_heads="
                f"{self.num_heads} (each head gets d_model / num_heads dimensions)"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"ModelConfig.d_model / num_heads = {self.head_dim} must be even: RoPE rotates pairs of "
                f"dimensions (d_model={self.d_model}, num_heads={self.num_heads})"
            )
        for name in ("fused_ops", "doc_masking", "doc_positions"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.doc_positions and not self.doc_masking:
            raise ValueError("ModelConfig.doc_positions = true needs doc_masking = true: positions that "
                             "restart per document only make sense when documents do not see each other")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(
                f"ModelConfig.attn_impl must be one of {list(ATTN_IMPLS)}, got {self.attn_impl!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ValueError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; expected keys from {known}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"ModelConfig is missing required key(s) {missing}")
        return cls(**d)


def architecture_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, a's value, b's value) for every key where two ModelConfig dicts describe different models.

    IMPLEMENTATION_KEYS and TRAINING_KEYS are not compared. A key absent from one side counts as its
    ModelConfig default: a config saved before that key existed was made with the behaviour the default
    keeps. A key absent without a default shows as '<absent>'.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)
                if f.default is not dataclasses.MISSING}

    def value(d: dict[str, Any], key: str) -> Any:
        return d[key] if key in d else defaults.get(key, "<absent>")

    keys = sorted((set(a) | set(b)) - set(IMPLEMENTATION_KEYS) - set(TRAINING_KEYS))
    return [(k, value(a, k), value(b, k)) for k in keys if value(a, k) != value(b, k)]
