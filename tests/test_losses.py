"""Cross-entropy, reference and fused, against torch's. Set DIST_LLM_TEST_DEVICE=cuda to run the
device-dependent ones on a GPU (bench/gpu_check.sh does)."""

import pytest
import torch
import torch.nn.functional as F
from device_under_test import TEST_DEVICE as DEVICE

from dist_llm.model.losses import cross_entropy, fused_cross_entropy

BOTH = pytest.mark.parametrize("loss_fn", [cross_entropy, fused_cross_entropy], ids=["reference", "fused"])


@BOTH
def test_equals_torch_cross_entropy_values_and_gradients(loss_fn):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, device=DEVICE, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7), device=DEVICE)
    ours = loss_fn(logits, targets)
    ref = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1))
    torch.testing.assert_close(ours, ref)
    # a scaled loss, as gradient accumulation and the fp16 grad scaler backpropagate
    (g_ours,) = torch.autograd.grad(ours * 3.5, logits)
    (g_ref,) = torch.autograd.grad(ref * 3.5, logits)
    torch.testing.assert_close(g_ours, g_ref)


@BOTH
def test_stable_for_huge_logits(loss_fn):
    logits = torch.tensor([[1e4, 0.0, -1e4], [5e4, 5e4, 5e4]], device=DEVICE, requires_grad=True)
    targets = torch.tensor([1, 2], device=DEVICE)
    ours = loss_fn(logits, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets))
    ours.backward()
    assert torch.isfinite(logits.grad).all()
    expected = torch.tensor([[1.0, -1.0, 0.0], [1 / 3, 1 / 3, -2 / 3]], device=DEVICE) / 2
    torch.testing.assert_close(logits.grad, expected)


@BOTH
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "grad"])  # fused: two paths
def test_bf16_logits_are_computed_in_float32(loss_fn, requires_grad):
    torch.manual_seed(0)
    logits = (torch.randn(16, 1000, device=DEVICE) * 20).bfloat16().requires_grad_(requires_grad)
    targets = torch.randint(0, 1000, (16,), device=DEVICE)
    ours = loss_fn(logits, targets)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, F.cross_entropy(logits.detach().float(), targets))


@BOTH
def test_ignore_index(loss_fn):
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11, device=DEVICE, requires_grad=True)
    targets = torch.randint(0, 11, (4, 6), device=DEVICE)
    targets[0, :3] = -100
    targets[2, 5] = -100
    ours = loss_fn(logits, targets, ignore_index=-100)
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)
    assert (g_ours[0, :3] == 0).all() and g_ours[0, 3].abs().sum() > 0
    # ignoring nothing changes nothing; the ignored rows really are left out of the mean
    assert not torch.allclose(ours, loss_fn(logits, targets.clamp(min=0)))


@BOTH
def test_logits_that_are_a_view_of_wider_rows(loss_fn):
    # The CUDA head padding returns logits as the first vocab columns of wider rows: not contiguous.
    torch.manual_seed(0)
    padded = torch.randn(2, 5, 24, device=DEVICE, requires_grad=True)
    logits = padded[..., :20]
    targets = torch.randint(0, 20, (2, 5), device=DEVICE)
    ours = loss_fn(logits, targets)
    ref = F.cross_entropy(logits.reshape(-1, 20), targets.reshape(-1))
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, padded)
    (g_ref,) = torch.autograd.grad(ref, padded)
    torch.testing.assert_close(g_ours, g_ref)
    assert (g_ours[..., 20:] == 0).all()


@BOTH
def test_shape_mismatch_is_a_clear_error(loss_fn):
    with pytest.raises(ValueError, match="targets shape"):
        loss_fn(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        loss_fn(torch.randn(2, 5), torch.zeros(2))
    with pytest.raises(ValueError, match="targets are on meta but logits on cpu"):
        loss_fn(torch.randn(2, 5), torch.zeros(2, dtype=torch.long, device="meta"))


# bf16 autocast exists on CPU and CUDA; fp16 autocast (with the grad scaler) is a CUDA feature.
AUTOCAST_DTYPES = [torch.bfloat16] + ([torch.float16] if DEVICE.type == "cuda" else [])


def assert_close_to_float64(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """got (a loss or gradient computed from `dtype` inputs) against the float64 value from the same
    inputs. Tolerance from the dtype: one rounding to it (eps) of the largest entry, or for float32 the
    few ulps its arithmetic along the way (exp, log, sums) adds. Each loss sums the same half-precision
    logits in float32, in its own order, so two correct losses can differ by far more than float32's
    default tolerance but never by this; a real error (wrong scale, a missed row) is far larger."""
    eps = max(torch.finfo(dtype).eps, 16 * torch.finfo(torch.float32).eps)
    atol = eps * want.abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


def float64_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100):
    """Loss and d loss / d logits computed in float64 from the given (half-precision) logits."""
    logits64 = logits.detach().double().requires_grad_()
    loss = F.cross_entropy(logits64.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=ignore_index)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logits64)
    return loss.detach(), grad


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_fused_under_autocast_matches_torch(dtype):
    # How the trainer calls it: half-precision logits from an autocast region, the gradient going back
    # in that precision. Each loss, and torch's, is held against float64 from the same logits.
    torch.manual_seed(0)
    weight = torch.randn(64, 32, device=DEVICE, requires_grad=True)
    hidden = torch.randn(40, 32, device=DEVICE)
    targets = torch.randint(0, 64, (40,), device=DEVICE)
    for name, loss_fn in (("F.cross_entropy", F.cross_entropy), ("fused_cross_entropy", fused_cross_entropy)):
        with torch.autocast(DEVICE.type, dtype=dtype):
            logits = hidden @ weight.T
            assert logits.dtype == dtype
            loss = loss_fn(logits, targets)
        assert loss.dtype == torch.float32
        loss.backward()
        ref_loss, ref_grad_logits = float64_loss_and_grad(logits, targets)
        ref_grad_weight = ref_grad_logits.T @ hidden.to(dtype).double()  # the matmul's own backward
        assert_close_to_float64(f"{name} loss", loss, ref_loss, dtype)
        assert_close_to_float64(f"{name} weight grad", weight.grad, ref_grad_weight, dtype)
        weight.grad = None
    # the tolerance still catches a real error: a loss over 39 of the 40 rows
    with pytest.raises(AssertionError):
        assert_close_to_float64("a row short", loss, float64_loss_and_grad(logits[1:], targets[1:])[0], dtype)


def test_fused_without_grad_gives_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(5, 9, requires_grad=True)
    targets = torch.randint(0, 9, (5,))
    with torch.no_grad():
        loss = fused_cross_entropy(logits, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.detach(), targets))


def test_fused_backward_twice_is_a_clear_error():
    logits = torch.randn(5, 9, requires_grad=True)
    loss = fused_cross_entropy(logits, torch.randint(0, 9, (5,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_fused_target_outside_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="target id 9 is outside the vocabulary"):
        fused_cross_entropy(torch.randn(2, 9), torch.tensor([3, 9]))
    with pytest.raises(ValueError, match="target id -1"):
        fused_cross_entropy(torch.randn(2, 9), torch.tensor([-1, 2]))
    # the ignored value itself is not a token id
    fused_cross_entropy(torch.randn(2, 9), torch.tensor([-100, 2]), ignore_index=-100)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's imports
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_under_torch_compile_matches_torch(dtype):
    # The trainer compiles the loss with train.compile: there it takes its compiled form. Compared with
    # F.cross_entropy under autocast, as the trainer runs it, with ignored positions and a scaled loss,
    # on logits that are a column view of wider rows (as the CUDA head padding returns them).
    torch.manual_seed(0)
    padded = (torch.randn(2, 6, 32, device=DEVICE) * 4).to(dtype).requires_grad_()
    logits = padded[..., :30]
    targets = torch.randint(0, 30, (2, 6), device=DEVICE)
    targets[1, 2:4] = -100
    compiled_loss = torch.compile(fused_cross_entropy)
    ref_loss, ref_grad = float64_loss_and_grad(logits, targets)
    paths = {
        "F.cross_entropy": lambda lg, t: F.cross_entropy(lg.flatten(0, 1), t.flatten(), ignore_index=-100),
        "compiled fused_cross_entropy": lambda lg, t: compiled_loss(lg, t, ignore_index=-100),
    }
    for name, loss_fn in paths.items():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = loss_fn(logits, targets)
        (grad,) = torch.autograd.grad(loss * 2.5, padded)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert_close_to_float64(f"{name} loss", loss, ref_loss, dtype)
        assert_close_to_float64(f"{name} grad", grad[..., :30], ref_grad * 2.5, dtype)
        assert (grad[1, 2:4] == 0).all() and (grad[..., 30:] == 0).all()
