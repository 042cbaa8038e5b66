"""The explicit bf16 causal-attention path that CPU training takes for short contexts (attention.py),
against a float64 reference and torch's SDPA, forward and gradients, and the rule that routes to it."""

import pytest
import torch
import torch.nn.functional as F

from dist_llm.model import MultiHeadSelfAttention, attention
from dist_llm.model.attention import (
    causal_mask,
    explicit_causal_attention,
    explicit_causal_fits,
    scaled_dot_product_attention,
)

BF16_EPS = torch.finfo(torch.bfloat16).eps


def _inputs(shape=(2, 3, 24, 16), seed=0):
    """q, k, v in float64, rounded to bf16 values, laid out as _split_heads gives them (a transposed view)."""
    gen = torch.Generator().manual_seed(seed)
    b, h, t, d = shape
    return [torch.randn(b, t, h, d, generator=gen, dtype=torch.float64).bfloat16().double().transpose(1, 2)
            for _ in range(3)]


def _forward_and_grads(fn, q, k, v, grad_out):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return [out.detach().double()] + [t.grad.double() for t in leaves]


def _max_rel_err(got, ref):
    return ((got - ref).abs().max() / ref.abs().max()).item()


def test_explicit_path_matches_float64_reference_and_sdpa_forward_and_gradients():
    q, k, v = _inputs()
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = q.shape[-2]
    reference = _forward_and_grads(
        lambda *a: scaled_dot_product_attention(*a, causal_mask(t, t)), q, k, v, grad_out)
    explicit = _forward_and_grads(explicit_causal_attention, *(x.bfloat16() for x in (q, k, v)), grad_out)
    sdpa32 = _forward_and_grads(lambda *a: F.scaled_dot_product_attention(*a, is_causal=True),
                                *(x.float() for x in (q, k, v)), grad_out)
    sdpa_bf16 = _forward_and_grads(lambda *a: F.scaled_dot_product_attention(*a, is_causal=True),
                                   *(x.bfloat16() for x in (q, k, v)), grad_out)
    for name, got, want, got_sdpa, want32 in zip(("out", "dq", "dk", "dv"), explicit, reference, sdpa_bf16,
                                                 sdpa32, strict=True):
        err = _max_rel_err(got, want)
        # bf16 rounding of the scores, probabilities and results: under one eps of the largest value here
        # (0.3-0.8 eps measured; an error of 1% in the probabilities would be 2.6 eps)
        assert err < 2 * BF16_EPS, f"{name}: relative error {err:.2e} against float64"
        # and no worse than torch's own bf16 SDPA kernel by more than rounding noise
        assert err < 1.5 * _max_rel_err(got_sdpa, want) + BF16_EPS / 2, name
        assert _max_rel_err(got, want32) < 2 * BF16_EPS, f"{name} against float32 SDPA"


def test_explicit_path_is_exact_in_float64_so_it_computes_causal_attention():
    q, k, v = _inputs((1, 2, 9, 4), seed=3)
    expected = scaled_dot_product_attention(q, k, v, causal_mask(9, 9))
    torch.testing.assert_close(explicit_causal_attention(q, k, v), expected, rtol=1e-12, atol=1e-12)
    # the first query sees only the first key
    torch.testing.assert_close(explicit_causal_attention(q, k, v)[..., 0, :], v[..., 0, :])


def test_routing_rule_bf16_cpu_short_contexts_only():
    short = torch.zeros(2, 4, 128, 32, dtype=torch.bfloat16)
    assert explicit_causal_fits(short)
    assert not explicit_causal_fits(short.float())  # float32: the flash kernel is faster
    long_context = attention.EXPLICIT_MAX_KEYS + 1
    assert not explicit_causal_fits(torch.zeros(1, 1, long_context, 8, dtype=torch.bfloat16))
    too_many = attention.EXPLICIT_MAX_SCORES // (128 * 128) + 1  # B*H heads of 128 x 128 scores
    assert explicit_causal_fits(torch.empty(too_many - 1, 1, 128, 8, dtype=torch.bfloat16))
    assert not explicit_causal_fits(torch.empty(too_many, 1, 128, 8, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype, expect_explicit", [(torch.bfloat16, True), (torch.float32, False)])
def test_attention_layer_under_cpu_autocast_takes_the_explicit_path(monkeypatch, dtype, expect_explicit):
    calls = []
    real = attention.explicit_causal_attention
    monkeypatch.setattr(attention, "explicit_causal_attention", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    mha = MultiHeadSelfAttention(32, 4, max_seq_len=16, theta=10000.0)
    x = torch.randn(2, 16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        out = mha(x)
    assert bool(calls) == expect_explicit
    torch.testing.assert_close(out.float(), mha(x), atol=16 * BF16_EPS, rtol=16 * BF16_EPS)
