"""Causal multi-head self-attention: a from-scratch reference path and a fused SDPA fast path.

Both paths share everything except the line that computes softmax(q k^T / sqrt(d_k)) v, so a test can
hold them equal. A KVCache lets generation feed one new token at a time. A document mask (see
document_mask.py) replaces the plain causal one in a packed training window.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dist_llm.model.document_mask import flex_attend
from dist_llm.model.layers import Linear, eager_on_cpu, softmax
from dist_llm.model.rope import RotaryPositionalEmbedding


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v over any leading dims; mask is boolean, True = "may attend".

    q: (..., n_queries, d_k), k: (..., n_keys, d_k), v: (..., n_keys, d_v). A query whose mask row is
    all False has no defined output (NaN), as in the formula.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ v


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask for queries sitting at the END of the key sequence.

    Query i has absolute position n_keys - n_queries + i and may attend keys at positions <= its own.
    With n_queries == n_keys this is the usual lower-triangular mask.
    """
    offset = n_keys - n_queries
    q_pos = torch.arange(n_queries, device=device)[:, None] + offset
    k_pos = torch.arange(n_keys, device=device)[None, :]
    return k_pos <= q_pos


# bf16 causal attention on a CPU, short contexts: an explicit q k^T -> softmax -> @ v path beats
# torch's CPU flash kernel, whose bf16 backward is slow. Measured fwd+bwd at 1 thread (Xeon, AMX), ms,
# flash / explicit: (B,H,T,D) = (8,4,128,32) 11.2 / 2.5; (4,16,256,32) 33.5 / 14.6; (2,12,512,64) 40.2 /
# 28.5; but (1,12,1024,64) 51.7 / 76.9 and (1,8,2048,64) 106 / 221: once one head's T x T scores
# outgrow the cache the flash kernel wins, hence the bound on T. In float32 the flash kernel is as fast
# or faster ((8,4,128,32) 3.2 / 3.6; (4,16,256,32) 22.3 / 34.5), so float32 keeps it; so does CUDA,
# and torch.compile (inductor has its own lowering). EXPLICIT_MAX_SCORES bounds the B*H*T*T scores the
# path holds (each kept for backward, in bf16): 2^25 elements, 64 MB per layer.
# `python bench/bench_attention.py` measures these again and prints the rule's choice per shape.
EXPLICIT_MAX_KEYS = 512
EXPLICIT_MAX_SCORES = 2**25


def explicit_causal_fits(q: torch.Tensor) -> bool:
    """Whether causal self-attention over q (..., T, d) takes explicit_causal_attention (see above)."""
    seq_len = q.shape[-2]
    return (q.dtype == torch.bfloat16 and eager_on_cpu(q) and seq_len <= EXPLICIT_MAX_KEYS
            and q.numel() // q.shape[-1] * seq_len <= EXPLICIT_MAX_SCORES)


def explicit_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal -inf mask) v for (..., T, d) q, k, v (bf16 where the model uses it).

    One baddbmm computes the scaled, masked scores (the scale applied to the float32 accumulator before
    rounding); torch's CPU softmax and its backward read half precision but compute the max, exp and
    sums in float32 and round only the probabilities, which then multiply v in half precision, as a
    half-precision matmul of the reference path under autocast would. Autograd derives the backward.
    """
    seq_len, head_dim = q.shape[-2], q.shape[-1]
    lead = q.shape[:-2]
    bias = torch.full((seq_len, seq_len), float("-inf"), device=q.device, dtype=q.dtype).triu_(1)
    q3, k3, v3 = (t.reshape(-1, seq_len, t.shape[-1]) for t in (q, k, v))
    scores = torch.baddbmm(bias, q3, k3.transpose(-2, -1), alpha=1.0 / math.sqrt(head_dim))
    return torch.bmm(torch.softmax(scores, dim=-1), v3).reshape(*lead, seq_len, v.shape[-1])


class LayerKVCache:
    """Keys and values of one attention layer for positions [0, length), preallocated to max_len.

    Buffers are allocated lazily on the first update so they take the dtype the keys actually have
    (bf16 under autocast, fp32 otherwise).
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (..., heads, T, d) at positions [start, start+T); return keys/values [0, start+T)."""
        end = start + k.shape[-2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked to write up to {end}")
        if self.k is None or self.k.shape[:-2] != k.shape[:-2] or self.k.dtype != k.dtype:
            shape = (*k.shape[:-2], self.max_len, k.shape[-1])
            self.k = torch.empty(shape, device=k.device, dtype=k.dtype)
            self.v = torch.empty((*shape[:-1], v.shape[-1]), device=v.device, dtype=v.dtype)
        self.k[..., start:end, :] = k
        self.v[..., start:end, :] = v
        return self.k[..., :end, :], self.v[..., :end, :]


class KVCache:
    """Per-layer caches plus the number of positions already filled (shared by all layers)."""

    def __init__(self, num_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.layers = [LayerKVCache(max_len) for _ in range(num_layers)]

    def reset(self) -> None:
        self.length = 0


class MultiHeadSelfAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        max_seq_len: int | None = None,
        theta: float | None = None,
        attn_impl: str = "sdpa",
        fused_rope: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if attn_impl not in ("sdpa", "reference"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'reference', got {attn_impl!r}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.attn_impl = attn_impl
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.rope: RotaryPositionalEmbedding | None = None
        if theta is not None:
            if max_seq_len is None:
                raise ValueError("MultiHeadSelfAttention needs max_seq_len when RoPE theta is given")
            if self.head_dim % 2 != 0:
                raise ValueError(
                    f"RoPE needs an even head dimension, got d_model/num_heads = {d_model}/{num_heads} "
                    f"= {self.head_dim}"
                )
            self.rope = RotaryPositionalEmbedding(
                theta, self.head_dim, max_seq_len, device=device, fused=fused_rope
            )

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (..., T, d_model) -> (..., heads, T, head_dim); head h owns projection rows [h*hd, (h+1)*hd).
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-2, -3)

    def forward(
        self,
        x: torch.Tensor,
        token_positions: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
        cache_start: int = 0,
        attn_mask: torch.Tensor | Any = None,
    ) -> torch.Tensor:
        """x: (..., T, d_model). With kv_cache, x holds the T new tokens at positions cache_start..

        attn_mask (no kv_cache): document_mask.document_mask's boolean (..., 1, T, T) tensor or
        FlexAttention BlockMask, in place of the causal mask."""
        seq_len = x.shape[-2]
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope is not None:
            if token_positions is None and kv_cache is not None:
                token_positions = torch.arange(cache_start, cache_start + seq_len, device=x.device)
            elif token_positions is not None and token_positions.dim() >= 2:
                token_positions = token_positions.unsqueeze(-2)  # broadcast over the heads dim
            q, k = self.rope(q, token_positions), self.rope(k, token_positions)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v, cache_start)
        out = self._attend(q, k, v) if attn_mask is None else self._attend_masked(q, k, v, attn_mask)
        return self.output_proj(out.transpose(-2, -3).flatten(-2))

    def _attend_masked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | Any) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):  # a BlockMask: built only for attn_impl="sdpa"
            return flex_attend(q, k, v, mask)
        if self.attn_impl == "reference":
            return scaled_dot_product_attention(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n_queries, n_keys = q.shape[-2], k.shape[-2]
        if self.attn_impl == "reference":
            return scaled_dot_product_attention(q, k, v, causal_mask(n_queries, n_keys, q.device))
        if n_queries == n_keys:
            if explicit_causal_fits(q):
                return explicit_causal_attention(q, k, v)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if n_queries == 1:  # one new token at the end sees every cached key: no mask needed
            return F.scaled_dot_product_attention(q, k, v)
        # is_causal aligns the triangle to the top-left, wrong for queries at an offset: pass the mask.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(n_queries, n_keys, q.device))
