import pytest
import torch
import torch.nn.functional as F

from dist_llm.losses import cross_entropy


def test_equals_torch_cross_entropy_values_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    ours = cross_entropy(logits, targets)
    ref = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1))
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_stable_for_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [5e4, 5e4, 5e4]], requires_grad=True)
    targets = torch.tensor([1, 2])
    ours = cross_entropy(logits, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets))
    ours.backward()
    assert torch.isfinite(logits.grad).all()


def test_bf16_logits_are_computed_in_float32():
    torch.manual_seed(0)
    logits = (torch.randn(16, 1000) * 20).bfloat16()
    targets = torch.randint(0, 1000, (16,))
    ours = cross_entropy(logits, targets)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, F.cross_entropy(logits.float(), targets))


def test_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11)
    targets = torch.randint(0, 11, (4, 6))
    targets[0, :3] = -100
    targets[2, 5] = -100
    ours = cross_entropy(logits, targets, ignore_index=-100)
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, ref)
    # ignoring nothing changes nothing; the ignored rows really are left out of the mean
    assert not torch.allclose(ours, cross_entropy(logits, targets.clamp(min=0)))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="targets shape"):
        cross_entropy(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cross_entropy(torch.randn(2, 5), torch.zeros(2))
