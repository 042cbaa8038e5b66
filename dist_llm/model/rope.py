"""Rotary position embedding: rotate interleaved pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d_k)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryPositionalEmbedding(nn.Module):
    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None) -> None:
        super().__init__()
        if d_k % 2 != 0:
            raise ValueError(f"RoPE needs an even head dimension d_k, got d_k={d_k}")
        self.d_k, self.max_seq_len = d_k, max_seq_len
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)
        angles = torch.arange(max_seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq[None, :]
        # Built once in float64 then stored in float32; non-persistent: derived from the config, so they
        # never enter a state dict (a checkpoint stays valid if max_seq_len changes).
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # (max_seq_len, d_k/2)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
        """x: (..., seq, d_k); token_positions: integer tensor broadcastable to x.shape[:-1]."""
        if x.shape[-1] != self.d_k:
            raise ValueError(f"RoPE was built for d_k={self.d_k}, got input with last dim {x.shape[-1]}")
        if x.shape[-2] > self.max_seq_len:
            raise ValueError(
                f"sequence length {x.shape[-2]} exceeds RoPE max_seq_len={self.max_seq_len}"
            )
        cos = self.cos[token_positions]  # (*positions.shape, d_k/2)
        sin = self.sin[token_positions]
        x_even, x_odd = x[..., 0::2], x[..., 1::2]
        # The products promote to float32 (tables are fp32) even under autocast; cast back at the end.
        rotated_even = x_even * cos - x_odd * sin
        rotated_odd = x_even * sin + x_odd * cos
        return torch.stack((rotated_even, rotated_odd), dim=-1).flatten(-2).to(x.dtype)
