"""Baseline for bench_model.py: karpathy/nanoGPT's GPT as its train.py configures it, written
independently for this project (same architecture, initialisation and loss, not its code).

What makes it faithful, point by point (nanoGPT model.py with train.py's defaults):
- no biases anywhere (bias=False): Linear layers without bias, LayerNorm with a weight only (eps 1e-5);
- the vocabulary padded up to a multiple of 64 (GPT-2's 50,257 -> 50,304), with lm_head tied to the
  token embedding; the padded rows are never a target, they only make the head's GEMM aligned;
- learned absolute position embeddings added to the token embeddings;
- attention with one fused q/k/v projection (c_attn) and F.scaled_dot_product_attention(is_causal=True);
- a GELU (exact, nn.GELU's default) MLP of 4x width (c_fc, c_proj);
- initialisation: every Linear and Embedding weight N(0, 0.02), and the two residual output projections
  (attn.c_proj, mlp.c_proj) N(0, 0.02 / sqrt(2 * n_layer));
- the loss inside forward, the same call: F.cross_entropy(logits.view(-1, V), targets.view(-1),
  ignore_index=-1), on the full (padded) logits.
Dropout is 0 in train.py; torch's dropout with p=0 returns its input unchanged, so it is left out.
forward returns the loss when given targets (nanoGPT returns (logits, loss); only the loss is used).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_MULTIPLE = 64  # nanoGPT pads GPT-2's vocabulary to 50,304 "for efficiency"


class _LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias (nn.LayerNorm(bias=False) is the same op)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class _Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=False)
        self.c_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.c_attn(x).split(d_model, dim=2)
        q, k, v = (t.view(batch, seq, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, seq, d_model))


class _MLP(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, 4 * d_model, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class _Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.ln_1 = _LayerNorm(d_model)
        self.attn = _Attention(d_model, num_heads)
        self.ln_2 = _LayerNorm(d_model)
        self.mlp = _MLP(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPTStyleLM(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, d_model: int, num_layers: int, num_heads: int):
        super().__init__()
        self.context_length, self.d_model, self.num_layers = context_length, d_model, num_layers
        self.vocab_size = -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        self.wte = nn.Embedding(self.vocab_size, d_model)
        self.wpe = nn.Embedding(context_length, d_model)
        self.h = nn.ModuleList(_Block(d_model, num_heads) for _ in range(num_layers))
        self.ln_f = _LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, self.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied: one (vocab, d_model) tensor
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * num_layers))

    def forward(self, token_ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, padded vocab), or given targets the mean cross-entropy, as nanoGPT computes it."""
        positions = torch.arange(token_ids.shape[1], dtype=torch.long, device=token_ids.device)
        x = self.wte(token_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def flops_per_token(self) -> float:
        """Same estimate as TransformerLM.flops_per_token: 6 * matmul weights (the tied head included,
        it is a real matmul) + 12 * layers * d_model * context."""
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6.0 * n_matmul + 12.0 * self.num_layers * self.d_model * self.context_length
