"""TransformerLM: names, sizes, errors, fast path == reference, autocast, torch.compile, overfitting.

Set DIST_LLM_TEST_DEVICE=cuda to run the device-dependent tests on a GPU (bench/gpu_check.sh does).
"""

import pytest
import torch
from device_under_test import TEST_DEVICE as DEVICE

from dist_llm.model import Linear, ModelConfig, TransformerLM
from dist_llm.model.losses import cross_entropy
from dist_llm.training.adamw import AdamW

# bf16 autocast exists on CPU and CUDA; fp16 autocast is a CUDA feature.
AUTOCAST_DTYPES = [torch.bfloat16] + ([torch.float16] if DEVICE.type == "cuda" else [])

TINY = dict(vocab_size=97, context_length=24, d_model=32, num_layers=2, num_heads=4, d_ff=64)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return TransformerLM(**{**TINY, **overrides}).to(DEVICE)


def test_state_dict_names_and_config():
    model = _model()
    keys = set(model.state_dict())
    expected = {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "output_proj")}
        expected |= {f"layers.{i}.ffn.{w}.weight" for w in ("w1", "w2", "w3")}
        expected |= {f"layers.{i}.ln1.weight", f"layers.{i}.ln2.weight"}
    assert keys == expected  # in particular no RoPE tables
    assert model.config == ModelConfig(**TINY)
    clone = TransformerLM.from_config(model.config).to(DEVICE)
    clone.load_state_dict(model.state_dict())
    ids = torch.randint(0, 97, (2, 10), device=DEVICE)
    torch.testing.assert_close(clone(ids), model(ids))


def test_num_params_and_flops_formula():
    model = _model()
    d, v, f, layers, ctx = 32, 97, 64, 2, 24
    per_layer = 4 * d * d + 3 * d * f + 2 * d
    assert model.num_params() == v * d + layers * per_layer + d + d * v
    assert model.num_params(include_embeddings=False) == layers * per_layer + d + d * v
    n_matmul = layers * (4 * d * d + 3 * d * f) + d * v
    assert model.flops_per_token() == 6 * n_matmul + 12 * layers * d * ctx
    assert n_matmul == sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear))


def test_bad_inputs_give_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="exceeds context_length=24"):
        model(torch.zeros(1, 25, dtype=torch.long, device=DEVICE))
    # Ids are checked in eval mode on every device, and always on CPU; CUDA training skips the check
    # (it would sync every step), so only CPU tries a bad id in training mode.
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="token id 97 is outside the vocabulary"):
            model.train()(torch.tensor([[1, 97]], device=DEVICE))
    model.eval()
    with pytest.raises(ValueError, match="token id 97 is outside the vocabulary"):
        model(torch.tensor([[1, 97]], device=DEVICE))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[-1, 3]], device=DEVICE))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3, device=DEVICE))
    with pytest.raises(ValueError, match="divisible"):
        TransformerLM(**{**TINY, "num_heads": 5})
    with pytest.raises(ValueError, match="even"):
        TransformerLM(**{**TINY, "d_model": 36, "num_heads": 4})


def _assert_same_logits_and_gradients(ref: TransformerLM, fast: TransformerLM) -> None:
    """Same batch through both: logits equal, and the gradient of every parameter equal (fp32)."""
    ids = torch.randint(0, 97, (3, 24), device=DEVICE)
    targets = torch.randint(0, 97, (3, 24), device=DEVICE)
    out_ref, out_fast = ref(ids), fast(ids)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    cross_entropy(out_ref, targets).backward()
    cross_entropy(out_fast, targets).backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        # observed differences are ~1e-8 against gradients of ~1e-2
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_sdpa_path_equals_reference_outputs_and_gradients_in_float32():
    ref, fast = _model(attn_impl="reference"), _model(attn_impl="sdpa")
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), fast.parameters(), strict=True))
    _assert_same_logits_and_gradients(ref, fast)


def test_fused_ops_path_equals_reference_outputs_and_gradients_in_float32():
    """The whole fast path training uses (SDPA + fused RMSNorm/SiLU/RoPE) against the all-from-scratch
    reference: same state dict keys, same logits, same gradients for every parameter."""
    ref, fast = _model(attn_impl="reference", fused_ops=False), _model()
    assert fast.config.fused_ops and fast.config.attn_impl == "sdpa"
    assert ref.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), fast.parameters(), strict=True))
    with torch.no_grad():  # non-trivial norm gains so their gradients are compared meaningfully
        for model in (ref, fast):
            for name, p in model.named_parameters():
                if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                    p.copy_(torch.linspace(0.5, 1.5, p.numel()))
    _assert_same_logits_and_gradients(ref, fast)


def test_padded_head_gives_the_same_logits_and_gradients():
    """The head's row padding (on by default on CUDA only) is forced on here, on any test device: the
    logits are a view into 128 padded columns (97 -> 128), with the same values and gradients."""
    plain, padded = _model(), _model()
    plain.logits_row_multiple = 1
    padded.pad_logits_on = (DEVICE.type,)
    ids = torch.randint(0, 97, (2, 24), device=DEVICE)
    out = padded(ids)
    assert out.shape == (2, 24, 97) and out.stride(-2) == 128  # the padded path ran
    assert plain(ids).stride(-2) == 97
    # decoding with a KV cache skips it: a padded weight copy per generated token costs more than it saves
    assert padded(ids[:, :4], kv_cache=padded.new_kv_cache()).stride(-2) == 97
    _assert_same_logits_and_gradients(plain, padded)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("attn_impl, fused_ops", [("sdpa", True), ("reference", False)])
def test_autocast_runs_and_is_close(dtype, attn_impl, fused_ops):
    model = _model(attn_impl=attn_impl, fused_ops=fused_ops)
    ids = torch.randint(0, 97, (2, 24), device=DEVICE)
    targets = torch.randint(0, 97, (2, 24), device=DEVICE)
    full = model(ids)
    with torch.autocast(device_type=DEVICE.type, dtype=dtype):
        low = model(ids)
        loss = cross_entropy(low, targets)
    assert low.dtype == dtype and loss.dtype == torch.float32
    rel = (low.float() - full).abs().mean() / full.abs().mean()
    assert rel < 0.03, rel
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_torch_compile_matches_eager():
    # One small test: compiling on CPU takes several seconds. Backward through the compiled graph too.
    model = _model(num_layers=1)
    compiled = torch.compile(model)
    ids = torch.randint(0, 97, (2, 16), device=DEVICE)
    targets = torch.randint(0, 97, (2, 16), device=DEVICE)
    out = compiled(ids)
    torch.testing.assert_close(out, model(ids), rtol=1e-4, atol=1e-4)
    cross_entropy(out, targets).backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()


def test_tiny_model_overfits_a_short_sequence():
    # Memorising 64 random tokens needs working gradients through every layer (typically ~40 steps).
    model = _model(seed=1, vocab_size=64, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=128)
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 64, (1, 65), generator=gen).to(DEVICE)
    x, y = seq[:, :-1], seq[:, 1:]
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if loss.item() < 0.1:
            break
    assert losses[0] > 3.0  # starts near log(64) ~ 4.2
    assert min(losses) < 0.1, losses[-5:]
