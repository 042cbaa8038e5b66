"""Attention within documents: document ids, the block-diagonal causal mask on every attention path,
packed windows against each document run alone, positions that restart per document, config keys.

Set DIST_LLM_TEST_DEVICE=cuda to run the model tests on a GPU, where the fused path is FlexAttention
(compiled); on a CPU the same FlexAttention path runs uncompiled when a test turns it on, forward only
(torch has no FlexAttention backward on a CPU), so its gradients are compared on a GPU.
"""

import contextlib
import dataclasses

import pytest
import torch
from device_under_test import TEST_DEVICE as DEVICE

from dist_llm.config import ConfigError, RunConfig
from dist_llm.data.documents import document_ids, separator_id
from dist_llm.model import ModelConfig, TransformerLM, document_mask
from dist_llm.model.config import architecture_differences
from dist_llm.model.document_mask import document_causal_mask, document_positions
from dist_llm.model.losses import cross_entropy

SEP = 0  # the separator's token id in these tests; ordinary tokens are 1..96
# head_dim 16: the smallest FlexAttention's GPU kernel takes
TINY = dict(vocab_size=97, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=96)
# Two packed windows of 32 tokens: a document cut at the start, whole ones ending in SEP, one cut at the
# end; the second window has a one-token document (a lone separator) and a separator at position 0.
DOC_LENGTHS = [[7, 12, 1, 12], [1, 9, 17, 5]]
PATHS = ["sdpa-mask", "reference", "flex"]
# flex's eager form (on a CPU) warns that it is unfused on every call; that is what the test wants.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _grad_mode(path: str) -> contextlib.AbstractContextManager:
    """no_grad where the path has no backward: FlexAttention on a CPU."""
    return torch.no_grad() if path == "flex" and DEVICE.type == "cpu" else contextlib.nullcontext()


def _packed_windows(seed: int = 0) -> torch.Tensor:
    """(2, 32) token ids: documents of DOC_LENGTHS, each (but a window's last) ending in SEP."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for lengths in DOC_LENGTHS:
        row = []
        for i, n in enumerate(lengths):
            doc = torch.randint(1, 97, (n,), generator=gen)
            if i < len(lengths) - 1:
                doc[-1] = SEP
            row.append(doc)
        rows.append(torch.cat(row))
    return torch.stack(rows).to(DEVICE)


def _model(path: str, seed: int = 0, monkeypatch: pytest.MonkeyPatch | None = None,
           **overrides) -> TransformerLM:
    """The model that takes the given attention path for doc_ids on DEVICE."""
    if path == "flex":
        assert monkeypatch is not None
        monkeypatch.setattr(document_mask, "FLEX_DEVICE_TYPES", (DEVICE.type,))
    elif monkeypatch is not None:
        monkeypatch.setattr(document_mask, "FLEX_DEVICE_TYPES", ())
    torch.manual_seed(seed)
    attn_impl = "reference" if path == "reference" else "sdpa"
    return TransformerLM(**{**TINY, "attn_impl": attn_impl, "doc_masking": True, **overrides}).to(DEVICE)


# ---------------------------------------------------------------- the data side: document ids


def test_document_ids_count_separators_before_each_token():
    x = torch.tensor([[5, 6, SEP, 7, SEP, 8], [SEP, SEP, 3, 4, 5, SEP]])
    # the separator belongs to the document it ends; the token after it starts the next one
    assert document_ids(x, SEP).tolist() == [[0, 0, 0, 1, 1, 2], [0, 1, 2, 2, 2, 2]]
    assert document_ids(x[0], SEP).tolist() == [0, 0, 0, 1, 1, 2]  # any leading dims
    assert document_ids(x, 99).tolist() == [[0] * 6] * 2  # no separator: one document
    assert document_ids(x, SEP).dtype == torch.int64
    with pytest.raises(TypeError, match="integer token ids"):
        document_ids(x.float(), SEP)
    assert separator_id({"separator_id": 3}) == 3
    with pytest.raises(ValueError, match="separator_id"):
        separator_id({})


def test_document_positions_restart_at_each_run():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2], [7, 7, 8, 8, 8, 8]])
    assert document_positions(ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]]
    assert document_positions(ids[1]).tolist() == [0, 1, 0, 1, 2, 3]


def test_boolean_mask_is_block_diagonal_causal():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    mask = document_causal_mask(ids)
    assert mask.shape == (2, 1, 6, 6)
    for b in range(2):
        for i in range(6):
            for j in range(6):
                assert bool(mask[b, 0, i, j]) == (j <= i and bool(ids[b, i] == ids[b, j])), (b, i, j)


# ---------------------------------------------------------------- the model: every path, per document


@pytest.mark.parametrize("doc_positions", [False, True], ids=["positions-continue", "positions-restart"])
@pytest.mark.parametrize("path", PATHS)
def test_packed_window_equals_each_document_run_alone(path, doc_positions, monkeypatch):
    """Every document's logits in the packed windows equal those of the document run on its own (which
    starts at position 0: RoPE depends only on position differences, so continuing positions agree too,
    to rounding)."""
    model = _model(path, monkeypatch=monkeypatch, doc_positions=doc_positions)
    x = _packed_windows()
    doc_ids = document_ids(x, SEP)
    with _grad_mode(path):
        packed = model(x, doc_ids=doc_ids)
    plain = model(x)
    for b, lengths in enumerate(DOC_LENGTHS):
        start = 0
        for n in lengths:
            alone = model(x[b : b + 1, start : start + n])[0]
            torch.testing.assert_close(packed[b, start : start + n], alone, rtol=1e-4, atol=2e-5)
            start += n
    # the test can fail: without the mask, later documents see earlier ones and their logits change
    assert (plain[0, 7:] - packed[0, 7:]).abs().max() > 1e-2
    torch.testing.assert_close(plain[0, :7], packed[0, :7], rtol=1e-4, atol=2e-5)  # the first: causal alone


def test_all_paths_give_the_same_logits_and_gradients(monkeypatch):
    x = _packed_windows(seed=1)
    targets = torch.roll(x, -1, dims=-1)
    results = {}
    for path in PATHS:
        model = _model(path, monkeypatch=monkeypatch)
        with _grad_mode(path):
            logits = model(x, doc_ids=document_ids(x, SEP))
        if logits.requires_grad:
            cross_entropy(logits, targets).backward()
        results[path] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    ref_logits, ref_grads = results["reference"]
    for path in ("sdpa-mask", "flex"):
        logits, grads = results[path]
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5, msg=path)
        if path == "flex" and DEVICE.type == "cpu":
            continue  # forward only, see the module docstring
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=5e-6, msg=f"{path} {name}")


def test_flex_path_builds_one_block_mask_and_takes_leading_dims(monkeypatch):
    """On the flex path the mask is a BlockMask built once per forward; 1-D token ids (no batch dim)
    work too and match the boolean-mask path."""
    built = []
    real = document_mask.document_block_mask
    monkeypatch.setattr(document_mask, "document_block_mask", lambda ids: built.append(1) or real(ids))
    x = _packed_windows()[1]
    doc_ids = document_ids(x, SEP)
    with _grad_mode("flex"):
        flex = _model("flex", monkeypatch=monkeypatch)(x, doc_ids=doc_ids)
    assert len(built) == 1  # for both layers
    masked = _model("sdpa-mask", monkeypatch=monkeypatch)(x, doc_ids=doc_ids)
    assert len(built) == 1
    torch.testing.assert_close(flex, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_bf16_autocast_is_close_to_float32(path, monkeypatch):
    model = _model(path, monkeypatch=monkeypatch)
    x = _packed_windows()
    doc_ids = document_ids(x, SEP)
    with _grad_mode(path):
        full = model(x, doc_ids=doc_ids)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
            low = model(x, doc_ids=doc_ids)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - full).abs().mean() / full.abs().mean()
    assert rel < 0.03, rel


@pytest.mark.parametrize("doc_positions", [False, True])
def test_doc_positions_restart_rope_positions(doc_positions, monkeypatch):
    """With doc_positions every layer's RoPE gets positions that restart at each document's first
    token; without, it gets none (0..T-1)."""
    model = _model("sdpa-mask", monkeypatch=monkeypatch, doc_positions=doc_positions)
    seen = []
    for layer in model.layers:
        layer.attn.rope.register_forward_pre_hook(lambda _m, args: seen.append(args[1]))
    x = _packed_windows()
    model(x, doc_ids=document_ids(x, SEP))
    assert len(seen) == 2 * TINY["num_layers"]  # q and k in each layer
    expected = torch.cat([torch.arange(n) for n in DOC_LENGTHS[0]])
    for positions in seen:
        if not doc_positions:
            assert positions is None
        else:  # unsqueezed over the heads dim: (B, 1, T)
            assert positions.shape == (2, 1, 32)
            assert positions[0, 0].tolist() == expected.tolist()
            assert positions[1, 0, :10].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_without_doc_ids_nothing_changes(monkeypatch):
    """doc_masking in the config does not mask on its own: generation and plain calls are unchanged."""
    masked = _model("sdpa-mask", monkeypatch=monkeypatch, doc_positions=True)
    plain = _model("sdpa-mask", doc_masking=False)
    plain_cfg = dataclasses.replace(masked.config, doc_masking=False, doc_positions=False)
    assert plain.config == plain_cfg
    x = _packed_windows()
    torch.testing.assert_close(masked(x), plain(x), rtol=0, atol=0)
    # one document over the whole window: the same as no doc_ids
    torch.testing.assert_close(masked(x, doc_ids=torch.zeros_like(x)), plain(x), rtol=1e-5, atol=1e-5)


def test_bad_doc_ids_and_keys_give_clear_errors():
    model = _model("sdpa-mask")
    x = _packed_windows()
    with pytest.raises(ValueError, match=r"shaped like token_ids \(2, 32\), got torch.int64 \(2, 8\)"):
        model(x, doc_ids=document_ids(x[:, :8], SEP))
    with pytest.raises(ValueError, match="doc_ids must be an integer tensor"):
        model(x, doc_ids=x.float())
    with pytest.raises(ValueError, match="kv_cache"):
        model(x[:, :4], model.new_kv_cache(), doc_ids=document_ids(x[:, :4], SEP))
    with pytest.raises(ValueError, match="doc_positions = true needs doc_masking"):
        ModelConfig(**TINY, doc_positions=True)
    with pytest.raises(ValueError, match="ModelConfig.doc_masking must be true or false"):
        ModelConfig(**TINY, doc_masking=1)
    with pytest.raises(ConfigError, match="'model.doc_positions' = true needs model.doc_masking = true"):
        RunConfig.from_dict({"model": {"doc_positions": True}})
    cfg = RunConfig.from_dict({"model": {"doc_masking": True, "doc_positions": True}})
    assert ModelConfig.from_dict(dataclasses.asdict(cfg.model)).doc_positions


def test_doc_keys_are_training_choices_not_architecture():
    """A checkpoint trained with or without document masking loads into a run with the other setting,
    and a config saved before these keys existed reads as both off."""
    old = {k: v for k, v in ModelConfig(**TINY).to_dict().items() if not k.startswith("doc_")}
    assert "doc_masking" not in old and ModelConfig.from_dict(old) == ModelConfig(**TINY)
    new = ModelConfig(**TINY, doc_masking=True, doc_positions=True).to_dict()
    assert architecture_differences(old, new) == []
    assert architecture_differences(new, {**new, "d_model": 32}) == [("d_model", 64, 32)]


@pytest.mark.slow
def test_torch_compile_with_doc_ids_matches_eager():
    """The model compiled whole, as train.compile does: on CUDA FlexAttention inside the graph."""
    model = _model("flex" if DEVICE.type == "cuda" else "sdpa-mask", num_layers=1)
    x = _packed_windows()
    doc_ids = document_ids(x, SEP)
    compiled = torch.compile(model)
    out = compiled(x, doc_ids=doc_ids)
    torch.testing.assert_close(out, model(x, doc_ids=doc_ids), rtol=1e-4, atol=1e-4)
    cross_entropy(out, torch.roll(x, -1, dims=-1)).backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()


@pytest.mark.slow
def test_compiled_flex_path_builds_a_mask_per_batch_without_recompiling(monkeypatch):
    """The exact path a GPU takes (create_block_mask and flex_attention compiled, a new mask closure per
    batch), run here on DEVICE: forward equals the boolean mask, and a second batch with other document
    boundaries reuses the compiled code (a recompile per batch would cost seconds per training step)."""
    monkeypatch.setattr(document_mask, "FLEX_COMPILED_ON", (DEVICE.type,))
    flex = _model("flex", monkeypatch=monkeypatch, num_layers=1)
    reference = _model("reference", num_layers=1)
    with torch.no_grad():
        for seed in (0, 1):
            x = _packed_windows(seed)
            x[:, torch.randperm(32, generator=torch.Generator().manual_seed(seed))[:3]] = SEP
            doc_ids = document_ids(x, SEP)
            out = flex(x, doc_ids=doc_ids)
            torch.testing.assert_close(out, reference(x, doc_ids=doc_ids), rtol=1e-5, atol=1e-5)
            monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)


def test_trainer_masks_documents_in_training_and_validation(tiny_data, tmp_path):
    """model.doc_masking reaches the training step and validation: the same run with and without it
    logs different losses (the tiny corpus packs several documents per window), both learn."""
    from trainer_runs import read_jsonl, tiny_train_args, train_losses

    from dist_llm.train import main

    plain, masked = tmp_path / "plain", tmp_path / "masked"
    assert main(tiny_train_args(tiny_data, plain)) == 0
    masking = ("--model.doc_masking=true", "--model.doc_positions=true")
    assert main(tiny_train_args(tiny_data, masked, *masking)) == 0
    assert train_losses(masked)[1] != train_losses(plain)[1]
    val = {run: [r["val_loss"] for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r]
           for run in (plain, masked)}
    assert val[masked][0] != val[plain][0]  # step 0: same weights, only the mask differs
    assert val[masked][-1] < val[masked][0]


def test_evaluate_command_masks_documents_for_a_doc_masking_model(tiny_data, tmp_path, monkeypatch):
    """`python -m dist_llm.evaluate` scores a model trained with model.doc_masking as it was trained:
    the evaluation loop gets the separator (without it, attention would cross documents)."""
    from trainer_runs import tiny_train_args

    from dist_llm import evaluate
    from dist_llm.train import main

    run = tmp_path / "masked"
    assert main(tiny_train_args(tiny_data, run, "--model.doc_masking=true", "--train.max_steps=3",
                                "--eval.sample_tokens=0")) == 0
    seen = []
    real = evaluate.window_loss_sums
    monkeypatch.setattr(evaluate, "window_loss_sums",
                        lambda *a, **kw: seen.append(kw.get("separator")) or real(*a, **kw))
    assert evaluate.main(["--run", str(run), "--data", str(tiny_data["corpus"]),
                          f"--cache-dir={tmp_path / 'c'}"]) == 0
    assert seen and all(s is not None for s in seen)
