"""Each layer against its formula written out directly, plus ModelConfig validation."""

import math

import pytest
import torch

from dist_llm.model import (
    Embedding,
    Linear,
    ModelConfig,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryPositionalEmbedding,
    SwiGLU,
    causal_mask,
    scaled_dot_product_attention,
    silu,
    softmax,
)


def test_linear_is_x_times_weight_transposed_and_init_is_truncated():
    torch.manual_seed(0)
    lin = Linear(300, 200)
    assert lin.weight.shape == (200, 300)
    x = torch.randn(4, 5, 300)
    torch.testing.assert_close(lin(x), torch.einsum("bti,oi->bto", x, lin.weight))
    std = math.sqrt(2 / 500)
    assert abs(lin.weight.std().item() - std) < 0.1 * std  # truncation at 3 std barely lowers the std
    assert lin.weight.abs().max() <= 3 * std + 1e-6


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_embedding_is_row_lookup(fused):
    torch.manual_seed(0)
    emb = Embedding(50, 8, fused=fused)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 8)
    torch.testing.assert_close(out[1, 2], emb.weight[1])
    assert emb.weight.abs().max() <= 3.0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_rmsnorm_matches_formula_and_upcasts(fused):
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5, fused=fused)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(3, 16) * 100
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    # bf16 in, bf16 out, and computed in fp32: equals the fp32 result rounded once to bf16.
    xb = x.bfloat16()
    out = norm(xb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, norm(xb.float()).bfloat16(), atol=0, rtol=0)


def test_rmsnorm_fused_backward_in_bf16_matches_float32():
    # A model cast to bf16 (weights and activations): the fused gradients come back in bf16, computed in
    # float32, so they equal the float32 reference gradients rounded to bf16 (up to bf16 rounding).
    torch.manual_seed(0)
    ref, fast = RMSNorm(16, fused=False), RMSNorm(16, fused=True).bfloat16()
    with torch.no_grad():
        ref.weight.copy_(torch.randn(16).bfloat16().float())
        fast.weight.copy_(ref.weight)
    x = (torch.randn(4, 5, 16) * 3).bfloat16()
    g = torch.randn(4, 5, 16).bfloat16()
    x_ref, x_fast = x.float().requires_grad_(), x.clone().requires_grad_()
    ref(x_ref).backward(g.float())
    fast(x_fast).backward(g)
    assert x_fast.grad.dtype == fast.weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x_fast.grad.float(), x_ref.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fast.weight.grad.float(), ref.weight.grad, rtol=1e-2, atol=1e-2)


def test_rmsnorm_fused_backward_takes_any_input_layout():
    # A transposed (non-contiguous) input and gradient: the fused CPU backward flattens its row products
    # whatever their layout.
    torch.manual_seed(0)
    ref, fast = RMSNorm(16, fused=False), RMSNorm(16, fused=True)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(16))
        fast.weight.copy_(ref.weight)
    base, grad_out = torch.randn(16, 5, 3) * 3, torch.randn(16, 5, 3).transpose(0, 2)
    grads = []
    for norm in (ref, fast):
        x = base.clone().requires_grad_()
        norm(x.transpose(0, 2)).backward(grad_out)
        grads.append((x.grad, norm.weight.grad))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_softmax_and_silu_are_stable_for_huge_inputs():
    x = torch.tensor([[1000.0, 1001.0, 999.0], [-1e4, 0.0, 1e4]])
    torch.testing.assert_close(softmax(x, dim=-1), torch.softmax(x, dim=-1))
    assert torch.isfinite(softmax(x, dim=0)).all()
    y = torch.tensor([-1e4, -100.0, 0.0, 3.0, 1e4])
    torch.testing.assert_close(silu(y), torch.nn.functional.silu(y))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_swiglu_formula(fused):
    torch.manual_seed(0)
    ffn = SwiGLU(8, 24, fused=fused)
    assert ffn.w1.weight.shape == ffn.w3.weight.shape == (24, 8) and ffn.w2.weight.shape == (8, 24)
    x = torch.randn(2, 3, 8)
    a, b = x @ ffn.w1.weight.T, x @ ffn.w3.weight.T
    torch.testing.assert_close(ffn(x), (a * torch.sigmoid(a) * b) @ ffn.w2.weight.T)


def _rope_direct(x, positions, theta):
    out = torch.empty_like(x)
    d = x.shape[-1]
    for t, pos in enumerate(positions.tolist()):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            c, s = math.cos(angle), math.sin(angle)
            x0, x1 = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = c * x0 - s * x1
            out[..., t, 2 * i + 1] = s * x0 + c * x1
    return out


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_rope_rotates_interleaved_pairs_and_has_no_state(fused):
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(theta=10000.0, d_k=8, max_seq_len=32, fused=fused)
    assert rope.state_dict() == {}  # cos/sin tables are non-persistent buffers
    x = torch.randn(2, 5, 8)
    positions = torch.tensor([0, 3, 7, 8, 31])
    torch.testing.assert_close(rope(x, positions), _rope_direct(x, positions, 10000.0), atol=1e-5, rtol=1e-5)
    # no positions means 0..seq-1
    torch.testing.assert_close(rope(x), rope(x, torch.arange(5)))
    # positions with a batch dim broadcast against x's leading dims
    per_batch = torch.stack([positions, positions.flip(0)])
    out = rope(x, per_batch)
    torch.testing.assert_close(out[1], _rope_direct(x[1], positions.flip(0), 10000.0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        rope(torch.randn(33, 8), torch.arange(33))


def _outputs_and_input_grads(module, x, *extra):
    x = x.detach().clone().requires_grad_(True)
    out = module(x, *extra)
    # a fixed random cotangent, so every output element's gradient path is exercised
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype))
    return out, x.grad


def test_fused_layers_equal_reference_layers_outputs_and_gradients_in_float32():
    """fused=True (training's default) against the from-scratch formulas: same values and gradients for
    the inputs and the weights, and for RoPE on a non-contiguous head view (as attention passes it)."""
    torch.manual_seed(0)
    tight = dict(rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 7, 16) * 3
    for cls, args in ((RMSNorm, (16,)), (SwiGLU, (16, 40))):
        ref, fast = cls(*args, fused=False), cls(*args, fused=True)
        with torch.no_grad():
            for p_ref, p_fast in zip(ref.parameters(), fast.parameters(), strict=True):
                p_ref.add_(torch.randn_like(p_ref) * 0.1)  # RMSNorm's weight is not all ones
                p_fast.copy_(p_ref)
        out_ref, gx_ref = _outputs_and_input_grads(ref, x)
        out_fast, gx_fast = _outputs_and_input_grads(fast, x)
        torch.testing.assert_close(out_fast, out_ref, **tight)
        torch.testing.assert_close(gx_fast, gx_ref, **tight)
        for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
            torch.testing.assert_close(p_fast.grad, p_ref.grad, **tight, msg=f"{cls.__name__}.{name}")
    ids = torch.tensor([[3, 0, 49, 3], [7, 3, 1, 49]])  # repeated ids: gradients must accumulate
    emb_ref, emb_fast = Embedding(50, 16, fused=False), Embedding(50, 16, fused=True)
    emb_fast.load_state_dict(emb_ref.state_dict())
    g = torch.randn(2, 4, 16)
    torch.testing.assert_close(emb_fast(ids), emb_ref(ids), rtol=0, atol=0)
    emb_ref(ids).backward(g)
    emb_fast(ids).backward(g)
    torch.testing.assert_close(emb_fast.weight.grad, emb_ref.weight.grad, **tight)
    assert emb_fast.weight.grad[3].abs().sum() > 0 and emb_fast.weight.grad[2].abs().sum() == 0
    rope_ref = RotaryPositionalEmbedding(10000.0, 8, 32, fused=False)
    rope_fast = RotaryPositionalEmbedding(10000.0, 8, 32, fused=True)
    heads = (torch.randn(2, 9, 3, 8) * 3).transpose(1, 2)  # (B, H, T, d) view, not contiguous
    positions = torch.tensor([[0, 5, 2, 31, 7, 7, 1, 30, 3], [8, 0, 4, 2, 9, 10, 11, 29, 6]])
    for pos in (None, positions.unsqueeze(-2)):
        out_ref, g_ref = _outputs_and_input_grads(rope_ref, heads, pos)
        out_fast, g_fast = _outputs_and_input_grads(rope_fast, heads, pos)
        torch.testing.assert_close(out_fast, out_ref, **tight)
        torch.testing.assert_close(g_fast, g_ref, **tight)


def test_attention_function_matches_formula_with_leading_dims_and_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 4, 6, 8), torch.randn(2, 3, 4, 6, 7)
    mask = torch.rand(5, 6) > 0.3
    mask[:, 0] = True  # every query may attend something
    scores = torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(8)
    scores = torch.where(mask, scores, torch.tensor(float("-inf")))
    expected = torch.softmax(scores, -1) @ v
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), expected)
    # True means "may attend": a query allowed only key 0 returns v[0].
    only_first = torch.zeros(5, 6, dtype=torch.bool)
    only_first[:, 0] = True
    out = scaled_dot_product_attention(q, k, v, only_first)
    torch.testing.assert_close(out, v[..., :1, :].expand_as(out))


def test_causal_mask_with_offset():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_multihead_attention_heads_are_contiguous_row_blocks():
    torch.manual_seed(0)
    mha = MultiHeadSelfAttention(16, 4, attn_impl="reference")  # no RoPE
    x = torch.randn(2, 6, 16)
    heads = []
    for h in range(4):
        rows = slice(4 * h, 4 * h + 4)
        q, k, v = (x @ p.weight[rows].T for p in (mha.q_proj, mha.k_proj, mha.v_proj))
        scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~torch.ones(6, 6).tril().bool(), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v)
    expected = torch.cat(heads, -1) @ mha.output_proj.weight.T
    torch.testing.assert_close(mha(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"d_model": 30, "num_heads": 4}, "divisible"),
        ({"d_model": 12, "num_heads": 4}, "even"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"num_layers": 2.5}, "num_layers"),
        ({"attn_impl": "flash"}, "attn_impl"),
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"fused_ops": "yes"}, "fused_ops"),
    ],
)
def test_model_config_rejects_bad_values_naming_the_field(overrides, field):
    base = dict(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**base, **overrides})


def test_model_config_dict_round_trip_and_unknown_keys():
    cfg = ModelConfig(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    # config.json files written before fused_ops existed still load, with the fast path on
    older = {k: v for k, v in cfg.to_dict().items() if k != "fused_ops"}
    assert ModelConfig.from_dict(older).fused_ops is True
    assert ModelConfig.from_dict({**older, "fused_ops": False}).fused_ops is False
    with pytest.raises(ValueError, match="unknown ModelConfig key.*dropout"):
        ModelConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="missing.*d_ff"):
        ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "d_ff"})
