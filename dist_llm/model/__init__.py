"""The Llama-style transformer: layers, RoPE, attention (reference and fused), the LM, generation."""

from dist_llm.model.attention import (
    KVCache,
    LayerKVCache,
    MultiHeadSelfAttention,
    causal_mask,
    scaled_dot_product_attention,
)
from dist_llm.model.config import ModelConfig
from dist_llm.model.generate import generate, generate_stream, sample_next
from dist_llm.model.layers import Embedding, Linear, RMSNorm, SwiGLU, silu, softmax
from dist_llm.model.rope import RotaryPositionalEmbedding
from dist_llm.model.transformer import TransformerBlock, TransformerLM

__all__ = [
    "Embedding",
    "KVCache",
    "LayerKVCache",
    "Linear",
    "ModelConfig",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "RotaryPositionalEmbedding",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "causal_mask",
    "generate",
    "generate_stream",
    "sample_next",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
]
