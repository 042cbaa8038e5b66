"""Rotary position embedding: rotate interleaved pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d_k).

For pair i at position p with angle a = p * theta^(-2i/d_k):
    out[2i]   = x[2i] cos a - x[2i+1] sin a
    out[2i+1] = x[2i] sin a + x[2i+1] cos a
computed as  out = x * cos_table + swap_pairs(x) * signed_sin_table,  where swap_pairs turns each
(x[2i], x[2i+1]) into (x[2i+1], x[2i]) and the sin table holds (-sin a, +sin a) per pair: two
multiplies and an add over whole rows, instead of strided halves stacked back together.

fused=True (what training uses) does the same rotation as one complex multiply: viewing each pair
(x[2i], x[2i+1]) as the complex number x[2i] + j x[2i+1], multiplying by cos a + j sin a gives exactly
the two lines above, in one pass over memory and no swapped copy.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryPositionalEmbedding(nn.Module):
    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None, fused: bool = True) -> None:
        super().__init__()
        if d_k % 2 != 0:
            raise ValueError(f"RoPE needs an even head dimension d_k, got d_k={d_k}")
        self.d_k, self.max_seq_len, self.fused, self.theta = d_k, max_seq_len, fused, theta
        # Non-persistent: derived from the config, so they never enter a state dict (a checkpoint stays
        # loadable if max_seq_len changes). Filled by reset_parameters.
        self.register_buffer("cos", torch.empty(max_seq_len, d_k, device=device), persistent=False)
        self.register_buffer("signed_sin", torch.empty(max_seq_len, d_k, device=device), persistent=False)
        # One (cos a_i, sin a_i) per pair for the complex path. Kept real (…, 2), not complex: a
        # module.to(bfloat16) would drop the imaginary part of a complex buffer.
        pairs = torch.empty(max_seq_len, d_k // 2, 2, device=device)
        self.register_buffer("cos_sin", pairs, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)compute the tables: at construction, and for a model built on the meta device once it has
        real memory (the nn.Module convention for state a module derives itself)."""
        if self.cos.is_meta:
            return
        device, d_k = self.cos.device, self.d_k
        inv_freq = self.theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)
        positions = torch.arange(self.max_seq_len, device=device, dtype=torch.float64)
        angles = positions[:, None] * inv_freq[None, :]
        sin = angles.sin()
        # Built in float64, stored in float32.
        self.cos.copy_(angles.cos().repeat_interleave(2, dim=-1))  # cos a_i at 2i and 2i+1
        self.signed_sin.copy_(torch.stack((-sin, sin), dim=-1).flatten(-2))  # -sin a_i at 2i, +sin at 2i+1
        self.cos_sin.copy_(torch.stack((angles.cos(), sin), dim=-1))

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (..., seq, d_k); token_positions: integer tensor broadcastable to x.shape[:-1], or None
        for positions 0..seq-1 (then the tables are sliced, not gathered)."""
        seq_len = x.shape[-2]
        if x.shape[-1] != self.d_k:
            raise ValueError(f"RoPE was built for d_k={self.d_k}, got input with last dim {x.shape[-1]}")
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds RoPE max_seq_len={self.max_seq_len}")
        # Inductor has no complex codegen (it would fall back to eager kernels), while it fuses the real
        # form below into one kernel itself: so under torch.compile the real form is the fast one.
        if self.fused and not torch.compiler.is_compiling():
            table = self.cos_sin[:seq_len] if token_positions is None else self.cos_sin[token_positions]
            rotation = torch.view_as_complex(table.float())
            pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
            return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)
        if token_positions is None:
            cos, sin = self.cos[:seq_len], self.signed_sin[:seq_len]
        else:
            cos, sin = self.cos[token_positions], self.signed_sin[token_positions]
        swapped = torch.stack((x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
        # The products promote to float32 (tables are fp32) even under autocast; cast back at the end.
        return (x * cos + swapped * sin).to(x.dtype)
