"""Generation: KV cache == no cache, sampling options, reproducibility, context handling.

Set DIST_LLM_TEST_DEVICE=cuda to run these on a GPU.
"""

import pytest
import torch
from device_under_test import TEST_DEVICE as DEVICE

from dist_llm.model import TransformerLM, generate, generate_stream

CTX = 16


def _make_model(attn_impl):
    torch.manual_seed(0)
    m = TransformerLM(
        vocab_size=53, context_length=CTX, d_model=32, num_layers=2, num_heads=4, d_ff=64, attn_impl=attn_impl
    )
    return m.to(DEVICE).eval()


@pytest.fixture(scope="module")
def model():
    return _make_model("sdpa")


# The cache-equivalence tests run on both attention paths (their masks for cached queries differ).
both_paths = pytest.mark.parametrize("attn_impl", ["sdpa", "reference"])


@torch.no_grad()
def _greedy_without_cache(model, prompt, n):
    """The textbook loop: run the whole (cropped) sequence every step, take the argmax."""
    ids = list(prompt)[-CTX:]
    out = []
    for _ in range(n):
        window = torch.tensor([ids[-CTX:]], device=DEVICE)
        next_id = int(model(window)[0, -1].argmax())
        ids.append(next_id)
        out.append(next_id)
    return out


@both_paths
def test_greedy_with_cache_equals_without_cache(attn_impl):
    model = _make_model(attn_impl)
    prompt = [5, 17, 3, 42]
    assert generate(model, prompt, 10, temperature=0) == _greedy_without_cache(model, prompt, 10)


@both_paths
def test_greedy_past_the_context_slides_the_window(attn_impl):
    model = _make_model(attn_impl)
    # 4 + 30 tokens > context 16: the cache is rebuilt from the last CTX tokens instead of crashing.
    prompt = [1, 2, 3, 4]
    assert generate(model, prompt, 30, temperature=0) == _greedy_without_cache(model, prompt, 30)


@both_paths
def test_chunked_prefill_with_cache_equals_full_forward(attn_impl):
    model = _make_model(attn_impl)
    # Queries at an offset need the offset causal mask, not is_causal's top-left triangle.
    ids = torch.randint(0, 53, (2, CTX), device=DEVICE)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache()
        parts = [model(ids[:, :5], kv_cache=cache), model(ids[:, 5:11], kv_cache=cache)]
        parts += [model(ids[:, t : t + 1], kv_cache=cache) for t in range(11, CTX)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(ids[:, :1], kv_cache=cache)


def test_long_prompt_is_cropped_with_a_warning(model):
    prompt = list(range(40))
    expected = "longer than the model's context_length=16; keeping only its last 16"
    with pytest.warns(UserWarning, match=expected) as caught:
        out = generate(model, prompt, 5, temperature=0)
    assert out == _greedy_without_cache(model, prompt[-CTX:], 5)
    # The warning points at the caller's line, not into torch's no_grad wrapper of the generator.
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(UserWarning, match=expected) as caught:
        stream = generate_stream(model, prompt, 5, temperature=0)  # at the call, before any next()
    assert [w.filename for w in caught] == [__file__]
    assert list(stream) == out


def test_seed_reproducible_and_global_rng_untouched(model):
    torch.manual_seed(1234)
    cuda = DEVICE.type == "cuda"
    rng_states = lambda: [torch.get_rng_state()] + ([torch.cuda.get_rng_state()] if cuda else [])
    before = rng_states()
    a = generate(model, [1, 2], 20, temperature=1.0, seed=7)
    b = generate(model, [1, 2], 20, temperature=1.0, seed=7)
    c = generate(model, [1, 2], 20, temperature=1.0, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(rng_states(), before, strict=True))
    assert a == b and a != c
    assert len(a) == 20 and all(0 <= t < 53 for t in a)


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    greedy = generate(model, [9, 8], 12, temperature=0)
    assert generate(model, [9, 8], 12, temperature=1.5, top_k=1, seed=3) == greedy
    assert generate(model, [9, 8], 12, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_top_k_restricts_the_support(model):
    # With top_k=3 every sampled token is among the 3 most likely next tokens of its context.
    prompt = [4, 4, 4]
    ids = list(prompt)
    for token in generate(model, prompt, 12, temperature=5.0, top_k=3, seed=0):
        with torch.no_grad():
            logits = model(torch.tensor([ids[-CTX:]], device=DEVICE))[0, -1]
        assert token in logits.topk(3).indices.tolist()
        ids.append(token)


def test_eos_stops_generation_and_stream_matches(model):
    greedy = generate(model, [3, 1], 12, temperature=0)
    eos = greedy[4]
    first = greedy.index(eos)
    assert generate(model, [3, 1], 12, temperature=0, eos_id=eos) == greedy[:first]
    assert list(generate_stream(model, [3, 1], 12, temperature=0)) == greedy
    stream = generate_stream(model, [3, 1], 12, temperature=0)
    assert next(stream) == greedy[0]


def test_bad_prompts_are_clear_errors(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="prompt token id 53 is outside the vocabulary"):
        generate(model, [1, 53], 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [1], 3, top_p=0.0)


def test_generate_under_autocast_and_restores_train_mode(model):
    model.train()
    dtype = torch.bfloat16
    with torch.autocast(device_type=DEVICE.type, dtype=dtype):
        out = generate(model, torch.tensor([1, 2, 3]), 8, temperature=0.8, top_p=0.9, seed=0)
    assert len(out) == 8
    assert model.training
    model.eval()
