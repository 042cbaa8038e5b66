"""The mapping between our TransformerLM and Hugging Face's LlamaForCausalLM: config and weights.

The two architectures compute the same function (pre-norm RMSNorm, RoPE, SwiGLU, untied lm_head, no
biases) with one difference in layout: our RoPE rotates interleaved pairs (x[2i], x[2i+1]) while HF
Llama rotates halves (x[i], x[i + d/2]) ("rotate_half"), both by angle pos * theta^(-2i/d). Permuting the
output rows of q_proj and k_proj within each head, even rows first then odd rows, turns one layout into
the other; attention scores are dot products of q and k, which a shared permutation leaves unchanged.
v_proj and o_proj are untouched. Everything here is an exact reordering, so export followed by import
gives back identical tensors.

RMSNorm also matches: HF computes the normalisation in float32 and multiplies by the weight after
casting back to the input dtype; in float32 that is our `x / sqrt(mean(x^2) + eps) * weight`.
"""

from __future__ import annotations

from typing import Any

import torch

from dist_llm.model import ModelConfig


class UnsupportedModelError(ValueError):
    """A model (ours or HF's) that cannot be mapped exactly onto the other architecture."""


# Our parameter name -> HF name; "{i}" is the layer index.
_LAYER_NAMES = {
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.output_proj": "self_attn.o_proj",
    "ffn.w1": "mlp.gate_proj",
    "ffn.w3": "mlp.up_proj",
    "ffn.w2": "mlp.down_proj",
    "ln1": "input_layernorm",
    "ln2": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embeddings": "model.embed_tokens", "ln_final": "model.norm", "lm_head": "lm_head"}
_ROPE_PROJECTIONS = ("attn.q_proj", "attn.k_proj")


def name_map(num_layers: int) -> dict[str, str]:
    """Every weight name of our model with `num_layers` layers -> its HF Llama name."""
    names = {f"{ours}.weight": f"{hf}.weight" for ours, hf in _TOP_NAMES.items()}
    for i in range(num_layers):
        for ours, hf in _LAYER_NAMES.items():
            names[f"layers.{i}.{ours}.weight"] = f"model.layers.{i}.{hf}.weight"
    return names


def interleaved_to_half(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows within each head: (0, 1, 2, 3, ...) -> (0, 2, ..., 1, 3, ...)."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    w = weight.reshape(num_heads, head_dim // 2, 2, in_features)
    return w.transpose(1, 2).reshape(out_features, in_features).contiguous()


def half_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of interleaved_to_half."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    w = weight.reshape(num_heads, 2, head_dim // 2, in_features)
    return w.transpose(1, 2).reshape(out_features, in_features).contiguous()


def _is_rope_projection(our_name: str) -> bool:
    return our_name.endswith(tuple(f"{p}.weight" for p in _ROPE_PROJECTIONS))


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our weight name -> shape (out_features, in_features) for a model of config `cfg`."""
    d, f = cfg.d_model, cfg.d_ff
    per_layer = {
        "attn.q_proj": (d, d), "attn.k_proj": (d, d), "attn.v_proj": (d, d), "attn.output_proj": (d, d),
        "ffn.w1": (f, d), "ffn.w3": (f, d), "ffn.w2": (d, f), "ln1": (d,), "ln2": (d,),
    }  # fmt: skip
    shapes = {
        "token_embeddings.weight": (cfg.vocab_size, d),
        "ln_final.weight": (d,),
        "lm_head.weight": (cfg.vocab_size, d),
    }
    for i in range(cfg.num_layers):
        shapes.update({f"layers.{i}.{name}.weight": shape for name, shape in per_layer.items()})
    return shapes


def check_state_dict(
    state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str
) -> None:
    """Exactly the expected tensor names with the expected shapes, or an error naming what differs."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise UnsupportedModelError(f"{source}: {'; '.join(parts)}")
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != shape:
            raise UnsupportedModelError(
                f"{source}: tensor {name} has shape {tuple(state_dict[name].shape)}, expected {shape}"
            )


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> LlamaForCausalLM's (same tensors, renamed; q/k rows permuted)."""
    out = {}
    for ours, hf in name_map(cfg.num_layers).items():
        w = state_dict[ours]
        out[hf] = interleaved_to_half(w, cfg.num_heads) if _is_rope_projection(ours) else w.contiguous()
    return out


def from_hf_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's state dict -> ours (inverse of to_hf_state_dict)."""
    out = {}
    for ours, hf in name_map(cfg.num_layers).items():
        w = state_dict[hf]
        out[ours] = half_to_interleaved(w, cfg.num_heads) if _is_rope_projection(ours) else w.contiguous()
    return out


def to_hf_config(
    cfg: ModelConfig, *, bos_token_id: int | None, eos_token_id: int | None, dtype: str = "float32"
) -> dict[str, Any]:
    """A LlamaForCausalLM config.json for our model config.

    The RoPE base is written both as `rope_parameters` (transformers >= 5 reads it from there) and as
    the flat `rope_theta` that transformers 4.x reads; each version ignores the other's key.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,
    }


def _rope_theta(hf: dict[str, Any], source: str) -> float:
    """The RoPE base of an HF config, rejecting any scaling scheme (ours has plain RoPE only)."""
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is None:
            continue
        if not isinstance(value, dict):
            raise UnsupportedModelError(f"{source}: {key} must be an object, got {value!r}")
        rope_type = value.get("rope_type", value.get("type"))
        if rope_type is None and not set(value) <= {"rope_theta"}:
            # {"factor": 2.0} with no type is still a scaling, whichever HF would take it for
            fields = sorted(set(value) - {"rope_theta"})
            raise UnsupportedModelError(f"{source}: {key} has scaling fields {fields} without a rope_type; "
                                        "only plain RoPE ('default') is supported")
        if rope_type not in (None, "default"):
            raise UnsupportedModelError(
                f"{source}: {key} uses RoPE scaling type {rope_type!r}; only plain RoPE ('default') is "
                "supported"
            )
    theta = (params or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def from_hf_config(hf: dict[str, Any], source: str) -> ModelConfig:
    """Our ModelConfig for an HF Llama config.json, or UnsupportedModelError naming what does not fit."""
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise UnsupportedModelError(
            f"{source}: model_type is {model_type!r}; only 'llama' models can be imported"
        )
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    missing = [k for k in required if k not in hf]
    if missing:
        raise UnsupportedModelError(f"{source}: missing key(s) {missing}")
    heads = hf["num_attention_heads"]
    # Each check: (what is unsupported, is it present). A model we cannot compute exactly is refused
    # rather than imported approximately.
    unsupported = [
        ("attention biases (attention_bias=true)", bool(hf.get("attention_bias", False))),
        ("MLP biases (mlp_bias=true)", bool(hf.get("mlp_bias", False))),
        ("tied input/output embeddings (tie_word_embeddings=true; ours are untied)",
         bool(hf.get("tie_word_embeddings", False))),
        (f"grouped-query attention (num_key_value_heads={hf.get('num_key_value_heads')} != "
         f"num_attention_heads={heads})", hf.get("num_key_value_heads", heads) not in (None, heads)),
        (f"activation hidden_act={hf.get('hidden_act')!r} (only 'silu')",
         hf.get("hidden_act", "silu") != "silu"),
        (f"head_dim={hf.get('head_dim')} != hidden_size / num_attention_heads",
         hf.get("head_dim") not in (None, hf["hidden_size"] // heads)),
    ]  # fmt: skip
    problems = [what for what, present in unsupported if present]
    if problems:
        raise UnsupportedModelError(f"{source}: unsupported for import: {'; '.join(problems)}")
    rope_theta = _rope_theta(hf, source)  # outside the try below: its errors already name the source
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            context_length=hf.get("max_position_embeddings", 2048),
            d_model=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            d_ff=hf["intermediate_size"],
            rope_theta=rope_theta,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        )
    except ValueError as e:
        raise UnsupportedModelError(f"{source}: {e}") from None
