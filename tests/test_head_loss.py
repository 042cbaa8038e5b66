"""linear_cross_entropy (lm_head and cross-entropy chunk by chunk) against F.cross_entropy(lm_head(h)),
eager and compiled, fp32 and bf16 autocast, with ignored targets; and TransformerLM(x, targets=y).
Set DIST_LLM_TEST_DEVICE=cuda to run them on a GPU (bench/gpu_check.sh does)."""

import pytest
import torch
import torch.nn.functional as F
from device_under_test import TEST_DEVICE as DEVICE

from dist_llm.model import TransformerLM, attention
from dist_llm.model.head_loss import linear_cross_entropy

VOCAB, D_MODEL = 37, 16  # an odd vocabulary, as GPT-2's 50,257
COMPILED = torch.compile(linear_cross_entropy)
EAGER_AND_COMPILED = pytest.mark.parametrize(
    "loss_fn", [linear_cross_entropy, COMPILED], ids=["eager", "compiled"]
)


def make_inputs(dtype: torch.dtype = torch.float32, ignore: bool = True):
    torch.manual_seed(0)
    hidden = torch.randn(3, 50, D_MODEL, device=DEVICE, dtype=dtype, requires_grad=True)
    weight = (torch.randn(VOCAB, D_MODEL, device=DEVICE) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, VOCAB, (3, 50), device=DEVICE)
    if ignore:
        targets[0, :7] = -100
        targets[2, 49] = -100
    return hidden, weight, targets


def torch_loss(hidden, weight, targets):  # noqa: ANN001, ANN201
    logits = hidden @ weight.T
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's imports
@EAGER_AND_COMPILED
@pytest.mark.parametrize("pad_vocab_to", [1, 8], ids=["unpadded", "padded"])
def test_fp32_equals_torch_loss_and_gradients(loss_fn, pad_vocab_to):
    hidden, weight, targets = make_inputs()
    # chunks of 13 rows: several chunks, the last one short
    ours = loss_fn(hidden, weight, targets, chunk_rows=13, pad_vocab_to=pad_vocab_to)
    ref = torch_loss(hidden, weight, targets)
    assert ours.dtype == torch.float32 and ours.shape == ()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    # a scaled loss, as gradient accumulation and the fp16 grad scaler backpropagate
    g_ours = torch.autograd.grad(ours * 3.5, (hidden, weight))
    g_ref = torch.autograd.grad(ref * 3.5, (hidden, weight))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (g_ours[0][0, :7] == 0).all() and g_ours[0][0, 7].abs().sum() > 0  # ignored rows: no gradient


def float64_reference(hidden, weight, targets, dtype):  # noqa: ANN001, ANN201
    """The loss and gradients from the half-precision matmul inputs, computed in float64 throughout,
    and the largest |logit| (what the loss's rounding error scales with)."""
    h64 = hidden.detach().to(dtype).double().requires_grad_()
    w64 = weight.detach().to(dtype).double().requires_grad_()
    loss = torch_loss(h64, w64, targets)
    return (loss, *torch.autograd.grad(loss, (h64, w64)), (h64 @ w64.T).abs().max().item())


def assert_within_half_precision(loss, grads, reference, dtype) -> None:  # noqa: ANN001
    """The loss and gradients of a half-precision run against float64_reference, with tolerances from
    the dtype: rounding each logit to it moves it by at most eps/2 x |logit|, and the loss (log-sum-exp
    minus the picked logit) by at most eps x max|logit|; each gradient passes through two roundings
    (the logits' gradient, the matmul's output), so 2 eps of its largest entry."""
    ref_loss, ref_h, ref_w, logit_max = reference
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(loss.double(), ref_loss, rtol=0, atol=eps * logit_max)
    for got, want in zip(grads, (ref_h, ref_w), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2 * eps * want.abs().max().item())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@EAGER_AND_COMPILED
def test_bf16_autocast_matches_a_float64_reference(loss_fn):
    # How the trainer runs it: float32 hidden states and weight, bf16 autocast. The matmuls then take
    # bf16 inputs (as the plain head would) and round their outputs to bf16.
    hidden, weight, targets = make_inputs()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        ours = loss_fn(hidden, weight, targets, chunk_rows=13)
    assert ours.dtype == torch.float32
    grads = torch.autograd.grad(ours, (hidden, weight))
    assert grads[0].dtype == hidden.dtype and grads[1].dtype == weight.dtype
    assert_within_half_precision(ours, grads, float64_reference(hidden, weight, targets, torch.bfloat16),
                                 torch.bfloat16)  # fmt: skip
    # The tolerance still catches a real error: counting the ignored rows in the mean, say.
    wrong = float64_reference(hidden, weight, targets.clamp(min=0), torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_within_half_precision(ours, grads, wrong, torch.bfloat16)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@EAGER_AND_COMPILED
def test_bf16_parameters_give_bf16_gradients(loss_fn):
    # Weights already in bf16 (e.g. FSDP mixed precision): gradients come back in bf16.
    hidden, weight, targets = make_inputs(torch.bfloat16, ignore=False)
    ours = loss_fn(hidden, weight, targets, ignore_index=None)
    grads = torch.autograd.grad(ours, (hidden, weight))
    assert grads[0].dtype == grads[1].dtype == torch.bfloat16
    assert_within_half_precision(ours, grads, float64_reference(hidden, weight, targets, torch.bfloat16),
                                 torch.bfloat16)  # fmt: skip


def test_without_grad_gives_the_loss_and_backward_is_a_clear_error():
    hidden, weight, targets = make_inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(loss, torch_loss(hidden, weight, targets).detach())
    loss = linear_cross_entropy(hidden.detach(), weight.detach(), targets)
    assert not loss.requires_grad


def test_all_ignored_gives_nan_like_torch():
    hidden, weight, targets = make_inputs()
    loss = linear_cross_entropy(hidden, weight, torch.full_like(targets, -100))
    assert torch.isnan(loss)


def test_bad_input_is_a_clear_error():
    hidden, weight, targets = make_inputs()
    with pytest.raises(ValueError, match="targets shape"):
        linear_cross_entropy(hidden, weight, targets[:, :-1])
    with pytest.raises(ValueError, match=r"weight shape \(37, 15\) must be \(vocab, 16\)"):
        linear_cross_entropy(hidden, weight[:, :-1], targets)
    with pytest.raises(TypeError, match="integer"):
        linear_cross_entropy(hidden, weight, targets.float())
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="linear_cross_entropy: target id 37 is outside"):
            linear_cross_entropy(hidden, weight, targets.masked_fill(targets == 3, VOCAB))


@pytest.mark.parametrize("ignore_index", [-100, 0, 5])
def test_ignore_index_anywhere_and_absent_matches_torch(ignore_index):
    # The CPU range check tells the loss whether any target is ignored (none: it skips the per-row
    # weights). An ignore_index inside the vocabulary (0, 5), present or absent, must still be honoured.
    hidden, weight, targets = make_inputs(ignore=False)
    for present in (False, True):
        t = targets.masked_fill(targets == ignore_index, 1)
        if present:
            t = t.clone()
            t[0, :3] = ignore_index
        ours = linear_cross_entropy(hidden, weight, t, ignore_index=ignore_index)
        logits = (hidden @ weight.T).reshape(-1, VOCAB)
        want = F.cross_entropy(logits, t.reshape(-1), ignore_index=ignore_index)
        torch.testing.assert_close(ours, want)
        g_ours = torch.autograd.grad(ours, (hidden, weight))
        g_want = torch.autograd.grad(want, (hidden, weight))
        torch.testing.assert_close(g_ours, g_want)


def test_an_ignored_value_does_not_hide_a_bad_target():
    # The range check runs on CPU tensors (on a GPU it would stall the step), so the inputs live there.
    hidden, weight, targets = (t.detach().cpu() for t in make_inputs())  # -100s: the lowest value
    bad = targets.clone()
    bad[1, 2] = VOCAB + 4
    with pytest.raises(ValueError, match=f"target id {VOCAB + 4} is outside"):
        linear_cross_entropy(hidden, weight, bad)
    bad[1, 2] = -7  # negative but not the ignored value
    with pytest.raises(ValueError, match="target id -7 is outside"):
        linear_cross_entropy(hidden, weight, bad)


def tiny_model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(vocab_size=VOCAB, context_length=16, d_model=D_MODEL, num_layers=2, num_heads=2,
                         d_ff=24, device=DEVICE)  # fmt: skip


@pytest.mark.parametrize("pad_on_this_device", [False, True], ids=["plain-head", "padded-head"])
def test_model_with_targets_returns_the_loss_of_its_logits(pad_on_this_device):
    model = tiny_model()
    if pad_on_this_device:  # the CUDA head padding, exercised wherever the test runs
        model.pad_logits_on = (DEVICE.type,)
        model.logits_row_multiple = 8
    x = torch.randint(0, VOCAB, (2, 16), device=DEVICE)
    y = torch.randint(0, VOCAB, (2, 16), device=DEVICE)
    y[1, 3] = -100
    loss = model(x, targets=y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(x)
    assert logits.shape == (2, 16, VOCAB)
    ref = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    for (name, _), got, want in zip(model.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_model_targets_with_kv_cache_is_a_clear_error():
    model = tiny_model()
    x = torch.randint(0, VOCAB, (1, 4), device=DEVICE)
    with pytest.raises(ValueError, match="targets .* and kv_cache .* cannot be combined"):
        model(x, model.new_kv_cache(), targets=x)


def test_backward_twice_is_a_clear_error():
    hidden, weight, targets = make_inputs()
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_model_with_targets_under_autocast_matches_eager(monkeypatch):
    # The trainer's compiled path: torch.compile(model)(x, targets=y) under bf16 autocast, the head and
    # loss traced into the model's graph. Eager bf16 attention on a CPU would take the explicit path
    # (attention.explicit_causal_attention, tested on its own), which rounds differently from the SDPA
    # kernel the compiled graph uses: turned off here so that only the head and loss are compared.
    monkeypatch.setattr(attention, "EXPLICIT_MAX_KEYS", 0)
    model = tiny_model()
    x = torch.randint(0, VOCAB, (2, 16), device=DEVICE)
    y = torch.randint(0, VOCAB, (2, 16), device=DEVICE)
    results = []
    for fn in (model, torch.compile(model)):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            loss = fn(x, targets=y)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (ref, ref_grads), (loss, grads) = results
    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(loss, ref, rtol=eps, atol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2 * eps * want.abs().max().item())
