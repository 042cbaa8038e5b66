"""Attention within documents: the block-diagonal causal mask of a packed window, from per-token doc ids.

A packed training window holds the tail of one document, whole documents, and the head of another. With
doc_ids (same shape as the token ids, equal ids = same document, each document one contiguous run) a
query attends only to keys at or before it that carry its own id. The model never sees token ids for
this: the data side computes doc_ids (dist_llm/data/documents.py), so the model knows nothing of the
tokenizer.

Two forms of the same mask:
- a boolean (..., 1, T, T) tensor, True = "may attend", for the from-scratch reference attention and for
  torch's SDPA (CPU, or attn_impl="reference" anywhere). It costs B*T*T bytes per batch.
- a FlexAttention BlockMask, on the device types in FLEX_DEVICE_TYPES (CUDA): built once per batch and
  shared by all layers; the compiled kernel skips the key blocks a query block cannot see, so masking
  costs little and the memory stays O(T) instead of O(T^2).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

# Device types whose document mask goes through FlexAttention (a test adds "cpu" to run it eagerly).
FLEX_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
# Device types on which flex_attention and create_block_mask are torch.compile'd: uncompiled, flex
# materialises the whole score matrix (correct, slow), which is all a test on a CPU needs.
FLEX_COMPILED_ON: tuple[str, ...] = ("cuda",)
# FlexAttention arrived in torch 2.5; with an older torch every device takes the boolean mask.
HAS_FLEX = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
_compiled: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at each document's first token: (..., T) int64, like doc_ids.

    [[7,7,7,8,8,9]] -> [[0,1,2,0,1,0]]: a token's position is its distance from the start of its run.
    """
    seq = torch.arange(doc_ids.shape[-1], device=doc_ids.device)
    starts_here = torch.ones_like(doc_ids, dtype=torch.bool)
    starts_here[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    run_start = torch.where(starts_here, seq, torch.zeros_like(seq)).cummax(dim=-1).values
    return seq - run_start


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (..., 1, T, T): query i may attend key j iff j <= i and both carry the same doc id.
    The singleton dim broadcasts over the attention heads."""
    seq = torch.arange(doc_ids.shape[-1], device=doc_ids.device)
    causal = seq[None, :] <= seq[:, None]
    same_doc = doc_ids[..., :, None] == doc_ids[..., None, :]
    return (same_doc & causal).unsqueeze(-3)


def _flex_functions(device_type: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(create_block_mask, flex_attention): compiled once per process on FLEX_COMPILED_ON devices; plain
    inside a model that is compiled whole (train.compile), whose graph compiles them with the rest."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if device_type not in FLEX_COMPILED_ON or torch.compiler.is_compiling():
        return create_block_mask, flex_attention
    if "fns" not in _compiled:
        _compiled["fns"] = (torch.compile(create_block_mask), torch.compile(flex_attention))
    return _compiled["fns"]


def uses_flex(device: torch.device, attn_impl: str) -> bool:
    """Whether the fused path (attn_impl="sdpa") on this device masks documents with FlexAttention."""
    return HAS_FLEX and attn_impl == "sdpa" and device.type in FLEX_DEVICE_TYPES


def document_block_mask(doc_ids: torch.Tensor) -> Any:
    """A FlexAttention BlockMask for (B, T) doc_ids (leading dims flattened into one batch dim)."""
    flat = doc_ids.reshape(-1, doc_ids.shape[-1])
    create_block_mask, _ = _flex_functions(doc_ids.device.type)

    def same_document_causal(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - flex's mask_mod signature
        return (kv_idx <= q_idx) & (flat[b, q_idx] == flat[b, kv_idx])

    seq_len = flat.shape[-1]
    return create_block_mask(same_document_causal, flat.shape[0], None, seq_len, seq_len,
                             device=doc_ids.device)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v under a BlockMask; q, k, v (..., heads, T, d), leading dims as the
    doc_ids the mask was built from."""
    _, flex_attention = _flex_functions(q.device.type)
    lead = q.shape[:-3]
    out = flex_attention(*(t.reshape(-1, *t.shape[-3:]) for t in (q, k, v)), block_mask=block_mask)
    return out.reshape(*lead, *out.shape[-3:])


def document_mask(doc_ids: torch.Tensor, attn_impl: str) -> torch.Tensor | Any:
    """The mask the attention layers take for these doc_ids: a BlockMask where uses_flex says so, else
    the boolean tensor. Built once per forward, shared by every layer."""
    if uses_flex(doc_ids.device, attn_impl):
        return document_block_mask(doc_ids)
    return document_causal_mask(doc_ids)
