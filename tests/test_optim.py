import copy
import math

import pytest
import torch

from dist_llm.training.adamw import AdamW, clip_grad_norm_, cosine_lr


def _make_params(seed):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape)) for shape in [(5, 4), (7,), (3,)]]


def _run(opt_cls, params, steps, lr_schedule=None, **kw):
    opt = opt_cls(params, **kw)
    gen = torch.Generator().manual_seed(123)
    for step in range(steps):
        if lr_schedule is not None:
            for g in opt.param_groups:
                g["lr"] = lr_schedule(step)
        for i, p in enumerate(params):
            # the last parameter never gets a gradient: both optimizers must leave it alone
            p.grad = None if i == 2 else torch.randn(p.shape, generator=gen) + p.detach()
        opt.step()
    return opt


def test_adamw_matches_torch_over_many_steps():
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, ref = _make_params(0), _make_params(0)
    schedule = lambda s: cosine_lr(s, 3e-3, 3e-4, 20, 250)
    _run(AdamW, ours, 300, schedule, **kw)
    _run(torch.optim.AdamW, ref, 300, schedule, **kw)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0], _make_params(0)[0])  # it did move
    torch.testing.assert_close(ours[2], _make_params(0)[2], rtol=0, atol=0)


def test_adamw_state_dict_round_trip_continues_identically():
    kw = dict(lr=1e-2, weight_decay=0.05)
    full = _make_params(1)
    _run(AdamW, full, 20, **kw)

    half = _make_params(1)
    opt = _run(AdamW, half, 10, **kw)
    state = opt.state_dict()
    resumed = AdamW(half, **kw)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["state"][0]["step"].item() == 10
    gen = torch.Generator().manual_seed(123)
    # replay the generator to step 10 so the next 10 gradients match the uninterrupted run
    for _ in range(10):
        for i, p in enumerate(half):
            if i != 2:
                torch.randn(p.shape, generator=gen)
    for _ in range(10):
        for i, p in enumerate(half):
            p.grad = None if i == 2 else torch.randn(p.shape, generator=gen) + p.detach()
        resumed.step()
    for a, b in zip(half, full, strict=True):
        torch.testing.assert_close(a, b)


def test_adamw_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="lr"):
        AdamW(_make_params(0), lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW(_make_params(0), betas=(0.9, 1.0))


def test_cosine_lr_formula():
    max_lr, min_lr, warm, cyc = 1.0, 0.1, 7, 21
    assert cosine_lr(0, max_lr, min_lr, warm, cyc) == 0.0
    assert cosine_lr(3, max_lr, min_lr, warm, cyc) == pytest.approx(3 / 7)
    assert cosine_lr(7, max_lr, min_lr, warm, cyc) == pytest.approx(1.0)
    halfway = 0.1 + 0.5 * (1 + math.cos(math.pi / 2)) * 0.9
    assert cosine_lr(14, max_lr, min_lr, warm, cyc) == pytest.approx(halfway)
    assert cosine_lr(21, max_lr, min_lr, warm, cyc) == pytest.approx(0.1)
    assert cosine_lr(100, max_lr, min_lr, warm, cyc) == 0.1
    assert cosine_lr(0, max_lr, min_lr, 0, 10) == pytest.approx(1.0)  # no warmup
    with pytest.raises(ValueError, match="warmup_iters"):
        cosine_lr(0, 1.0, 0.1, 10, 5)


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_equals_torch(max_norm):
    ours, ref = _make_params(2), _make_params(2)
    for a, b in zip(ours[:2], ref[:2], strict=True):
        g = torch.randn(a.shape)
        a.grad, b.grad = g.clone(), g.clone()
    norm = clip_grad_norm_(ours, max_norm)  # ours[2] has no grad and is skipped
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.testing.assert_close(norm, ref_norm)
    for a, b in zip(ours[:2], ref[:2], strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert ours[2].grad is None
    if max_norm < norm:
        total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours[:2]]))
        assert total == pytest.approx(max_norm, rel=1e-5)


@pytest.mark.parametrize("impl", ["torch", "dist_llm"])
def test_trainer_optimizer_decays_matrices_only_and_matches_reference(impl):
    """build_optimizer: decay on matrices, none on gains; the CPU kernel (fused) and our AdamW give
    the same update as a plain torch.optim.AdamW with the same two groups."""
    from dist_llm.config import OptimSection
    from dist_llm.model import ModelConfig, TransformerLM
    from dist_llm.training.optimizer import build_optimizer

    cfg = ModelConfig(vocab_size=32, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=24)
    torch.manual_seed(0)
    model, ref_model = TransformerLM.from_config(cfg), TransformerLM.from_config(cfg)
    ref_model.load_state_dict(model.state_dict())
    optim_cfg = OptimSection(impl=impl, max_lr=1e-2, weight_decay=0.5)
    opt = build_optimizer(model, optim_cfg, torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() >= 2}
    if impl == "torch":
        assert opt.defaults["fused"] is True  # the fast CPU kernel, not the per-tensor loop
    ref_groups = [{"params": [p for p in ref_model.parameters() if p.dim() >= 2], "weight_decay": 0.5},
                  {"params": [p for p in ref_model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    ref = torch.optim.AdamW(ref_groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    ids = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(1))
    for m, o in ((model, opt), (ref_model, ref)):
        for _ in range(3):
            torch.nn.functional.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
            o.step()
            o.zero_grad()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_resumed_optimizer_keeps_this_runs_kernel():
    """A state saved by a foreach AdamW, loaded into the trainer's fused one, keeps it fused and
    continues exactly as the foreach optimizer would."""
    from dist_llm.training.state import load_optimizer_state

    saved_params, live_params = _make_params(0), _make_params(0)
    saved_opt = _run(torch.optim.AdamW, saved_params, steps=3, lr=1e-2, foreach=True)
    live_opt = torch.optim.AdamW(live_params, lr=1e-2, fused=True)
    with torch.no_grad():
        for live, saved in zip(live_params, saved_params, strict=True):
            live.copy_(saved)
    # deepcopy: as if read from a checkpoint file (load_state_dict may keep the very same tensors)
    load_optimizer_state(live_opt, copy.deepcopy(saved_opt.state_dict()), "step_3")
    assert live_opt.param_groups[0]["fused"] is True and not live_opt.param_groups[0]["foreach"]
    for opt, params in ((saved_opt, saved_params), (live_opt, live_params)):
        for p in params[:2]:
            p.grad = torch.ones_like(p)
        opt.step()
    for live, saved in zip(live_params, saved_params, strict=True):
        torch.testing.assert_close(live, saved)
