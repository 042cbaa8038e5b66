"""TransformerBlock and TransformerLM: pre-norm Llama-style decoder (RMSNorm, RoPE, SwiGLU, untied head).

Config switches: attn_impl picks fused SDPA or the from-scratch softmax attention; fused_ops picks torch's
fused embedding/RMSNorm/SiLU/RoPE or the from-scratch formulas. Defaults are the fast paths training uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dist_llm.model.attention import KVCache, LayerKVCache, MultiHeadSelfAttention
from dist_llm.model.config import ModelConfig
from dist_llm.model.document_mask import document_mask, document_positions
from dist_llm.model.head_loss import linear_cross_entropy
from dist_llm.model.layers import Embedding, Linear, RMSNorm, SwiGLU


class TransformerBlock(nn.Module):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        max_seq_len: int,
        theta: float,
        norm_eps: float = 1e-5,
        attn_impl: str = "sdpa",
        fused_ops: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.ln1 = RMSNorm(d_model, eps=norm_eps, fused=fused_ops, device=device, dtype=dtype)
        self.attn = MultiHeadSelfAttention(
            d_model, num_heads, max_seq_len, theta, attn_impl=attn_impl, fused_rope=fused_ops,
            device=device, dtype=dtype,
        )  # fmt: skip
        self.ln2 = RMSNorm(d_model, eps=norm_eps, fused=fused_ops, device=device, dtype=dtype)
        self.ffn = SwiGLU(d_model, d_ff, fused=fused_ops, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        token_positions: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
        cache_start: int = 0,
        attn_mask: torch.Tensor | Any = None,
    ) -> torch.Tensor:
        h = _residual(x, self.attn(self.ln1(x), token_positions, kv_cache=kv_cache, cache_start=cache_start,
                                   attn_mask=attn_mask))
        return _residual(h, self.ffn(self.ln2(h)))


def _residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch, added into branch's own buffer when it has x's dtype: branch is a projection's fresh
    output that nothing saves for backward, so the step makes one activation-sized tensor fewer per
    residual (on a CPU a new buffer costs page faults and cache misses; about 1% of a tiny-model step).
    Under autocast the bf16 branch promotes into a new float32 tensor, as x + branch does."""
    if branch.dtype != x.dtype or branch.shape != x.shape:
        return x + branch
    return branch.add_(x)


class TransformerLM(nn.Module):
    # On CUDA the head multiplies by its weight padded with zero rows to a multiple of this many rows and
    # returns a view of the first vocab_size columns of the logits: the same logits and gradients, the
    # parameters unchanged. With an odd vocabulary (GPT-2's 50,257) the logits' rows would not start on
    # 16-byte boundaries, and the tensor-core GEMMs, the largest of the model, would pay for that (or
    # inductor would pad a copy of the tokens x vocab gradient each step). nanoGPT pads the vocabulary
    # itself (50,304) instead, which changes the parameter shapes. 1 turns this off (bench_model.py
    # --with-unpadded-head times that). Only on the device types in pad_logits_on: CUDA, where it was
    # measured to help (README, Model); on a CPU it would be an extra weight copy per step, unmeasured.
    # The training loss (forward with targets) pads the same way, chunk by chunk, with the padded columns
    # masked out of the softmax (dist_llm/model/head_loss.py, pad_vocab_to).
    logits_row_multiple = 64
    pad_logits_on: tuple[str, ...] = ("cuda",)

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        attn_impl: str = "sdpa",
        fused_ops: bool = True,
        doc_masking: bool = False,
        doc_positions: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        cfg = ModelConfig(
            vocab_size=vocab_size, context_length=context_length, d_model=d_model, num_layers=num_layers,
            num_heads=num_heads, d_ff=d_ff, rope_theta=rope_theta, norm_eps=norm_eps, attn_impl=attn_impl,
            fused_ops=fused_ops, doc_masking=doc_masking, doc_positions=doc_positions,
        )  # fmt: skip
        self.config = cfg
        self.token_embeddings = Embedding(vocab_size, d_model, fused=fused_ops, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(
                d_model, num_heads, d_ff, context_length, rope_theta, norm_eps, attn_impl, fused_ops,
                device, dtype,
            )  # fmt: skip
            for _ in range(num_layers)
        )
        self.ln_final = RMSNorm(d_model, eps=norm_eps, fused=fused_ops, device=device, dtype=dtype)
        self.lm_head = Linear(d_model, vocab_size, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, cfg: ModelConfig, device=None, dtype=None) -> TransformerLM:
        return cls(**cfg.to_dict(), device=device, dtype=dtype)

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.num_layers, self.config.context_length)

    def forward(self, token_ids: torch.Tensor, kv_cache: KVCache | None = None, *,
                targets: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """token_ids (..., T) -> logits (..., T, vocab_size); or, given targets (..., T) of next-token
        ids, the mean cross-entropy (float32 scalar; ids equal to -100 are left out).

        With targets the head and the loss are computed together chunk by chunk of rows
        (dist_llm/model/head_loss.py): the tokens x vocab logits never exist whole. That is the training path;
        generation and evaluation take the logits. The loss is computed here, inside the model's
        forward, because a sharded wrapper (FSDP) only gathers lm_head's weight during that forward.

        With kv_cache, token_ids are the next T tokens after the kv_cache.length cached ones; the cache
        is advanced by T.

        doc_ids (..., T), integers, one contiguous run per document (dist_llm.data.documents): each token
        attends only to earlier tokens of its own document, and with config.doc_positions its RoPE
        position counts from its document's first token. Not with kv_cache (generation is one document).
        """
        if targets is not None and kv_cache is not None:
            raise ValueError("targets (the training loss) and kv_cache (decoding) cannot be combined")
        start = 0 if kv_cache is None else kv_cache.length
        seq_len = token_ids.shape[-1]
        if start + seq_len > self.config.context_length:
            raise ValueError(
                f"sequence of {start + seq_len} tokens exceeds context_length={self.config.context_length}"
                + (f" ({start} cached + {seq_len} new)" if kv_cache is not None else "")
            )
        self._check_token_ids(token_ids)
        positions, mask = self._document_inputs(token_ids, kv_cache, doc_ids)
        x = self.token_embeddings(token_ids)
        for i, layer in enumerate(self.layers):
            if kv_cache is None:
                x = layer(x, positions, attn_mask=mask)
            else:
                x = layer(x, kv_cache=kv_cache.layers[i], cache_start=start)
        if kv_cache is not None:
            kv_cache.length = start + seq_len
        h = self.ln_final(x)
        if targets is not None:
            # The same CUDA row padding as _vocab_logits, applied per chunk (padded columns are masked).
            pad_to = self.logits_row_multiple if h.device.type in self.pad_logits_on else 1
            return linear_cross_entropy(h, self.lm_head.weight, targets, pad_vocab_to=pad_to)
        # Not while decoding with a cache: for a row or two of logits per step the padded copy of the
        # whole weight would cost more than the aligned GEMM saves.
        return self._vocab_logits(h, may_pad=kv_cache is None)

    def _document_inputs(self, token_ids: torch.Tensor, kv_cache: KVCache | None,
                         doc_ids: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | Any]:
        """(token positions or None, attention mask or None) for forward's doc_ids; checks its shape."""
        if doc_ids is None:
            return None, None
        if kv_cache is not None:
            raise ValueError("doc_ids cannot be combined with a kv_cache: generation runs one document")
        if doc_ids.shape != token_ids.shape or doc_ids.is_floating_point() or doc_ids.is_complex():
            raise ValueError(f"doc_ids must be an integer tensor shaped like token_ids "
                             f"{tuple(token_ids.shape)}, got {doc_ids.dtype} {tuple(doc_ids.shape)}")
        positions = document_positions(doc_ids) if self.config.doc_positions else None
        return positions, document_mask(doc_ids, self.config.attn_impl)

    def _vocab_logits(self, h: torch.Tensor, may_pad: bool = True) -> torch.Tensor:
        weight = self.lm_head.weight
        pad = -weight.shape[0] % self.logits_row_multiple
        if not may_pad or pad == 0 or weight.device.type not in self.pad_logits_on:
            return self.lm_head(h)
        padded = torch.nn.functional.pad(weight, (0, 0, 0, pad))  # zero rows: logits nobody reads
        return (h @ padded.T)[..., : weight.shape[0]]

    def _check_token_ids(self, token_ids: torch.Tensor) -> None:
        # Reading min/max back to Python forces a device->host sync, which stalls a GPU training step.
        # So: always check on CPU (free) and in eval mode (evaluation and generation, not the hot loop);
        # skip in CUDA training, where an out-of-range id still fails, as a device-side assert in the
        # embedding lookup. Skipped under torch.compile, where a data-dependent branch breaks the graph.
        if token_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token ids must be an integer tensor, got dtype {token_ids.dtype}")
        if torch.compiler.is_compiling() or token_ids.numel() == 0:
            return
        if token_ids.device.type == "cpu" or not self.training:
            lo, hi = int(token_ids.min()), int(token_ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size}) of this model"
                )

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count. include_embeddings=False leaves out the token embedding table (a lookup, no
        FLOPs); the untied lm_head is a real matmul and is always counted."""
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.token_embeddings.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), the PaLM / nanoGPT estimate:

            6 * N_matmul + 12 * num_layers * d_model * context_length

        N_matmul counts every weight that takes part in a matmul: the attention and SwiGLU projections
        of all layers plus lm_head (embedding lookups and RMSNorm gains excluded). Each such weight costs
        2 FLOPs per token forward and 4 backward. The second term is q k^T and attn @ v: 2 matmuls of
        2 * T * d_model FLOPs per token per layer forward, times 3 for training, counted over the full
        T x T square as in PaLM (the causal half is not subtracted), which is what MFU is quoted against.
        """
        cfg = self.config
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, Linear))
        return 6.0 * n_matmul + 12.0 * cfg.num_layers * cfg.d_model * cfg.context_length
