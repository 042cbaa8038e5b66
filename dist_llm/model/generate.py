"""Autoregressive sampling with a KV cache: greedy, temperature, top-k and top-p (nucleus).

Only the newest token goes through the model at each step; keys/values of earlier tokens come from
the cache. When the sequence outgrows the context window, the cache is rebuilt from the last
context_length tokens at every step: exactly what a cache-free "crop to the last context_length tokens"
loop computes, so greedy output with and without the cache matches everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch

from dist_llm.model.transformer import TransformerLM


def _validate_prompt(prompt_ids: Sequence[int] | torch.Tensor, vocab_size: int) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() != 1:
            raise ValueError(f"prompt_ids must be 1-D (one sequence), got shape {tuple(prompt_ids.shape)}")
        prompt_ids = prompt_ids.tolist()
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("prompt_ids is empty: generation needs at least one token to condition on")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


def sample_next(
    logits: torch.Tensor,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> int:
    """Pick one token id from a 1-D logits vector."""
    logits = logits.float()
    if not temperature:  # 0 or None: greedy
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the top one stays.
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_stream(
    model: TransformerLM,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time. eos_id, if sampled, ends the stream and is not yielded.

    temperature=0 is greedy. seed makes sampling reproducible through a private torch.Generator; the
    global RNG is never touched. Runs under whatever autocast context the caller set up. Bad arguments
    raise here, not at the first next(); a prompt longer than the context is cropped with a warning.
    """
    ids = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    return _sample_stream(model, ids, max_new_tokens, temperature, top_k, top_p, eos_id, seed)


def _checked_prompt(
    model: TransformerLM,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
) -> list[int]:
    """Check the arguments; the prompt ids as a list that fits the context. Called directly by generate
    and generate_stream, so the warning's stacklevel=3 names the line that called them."""
    cfg = model.config
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    ids = _validate_prompt(prompt_ids, cfg.vocab_size)
    if len(ids) > cfg.context_length:
        warnings.warn(
            f"prompt of {len(ids)} tokens is longer than the model's context_length={cfg.context_length}; "
            f"keeping only its last {cfg.context_length} tokens",
            stacklevel=3,
        )
        ids = ids[-cfg.context_length :]
    return ids


# A generator body runs at the first next(), under torch's no_grad wrapper: hence the checks above,
# done at the call, where an error or a warning can name the caller's line.
@torch.no_grad()
def _sample_stream(
    model: TransformerLM,
    ids: list[int],
    max_new_tokens: int,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    seed: int | None,
) -> Iterator[int]:
    cfg = model.config
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh nondeterministic seed, still without touching the global RNG
    else:
        generator.manual_seed(seed)

    was_training = model.training
    model.eval()
    try:
        cache = model.new_kv_cache()
        pending = ids  # tokens not yet in the cache
        for _ in range(max_new_tokens):
            if cache.length + len(pending) > cfg.context_length:
                # Window full: rebuild the cache from the last context_length tokens.
                cache.reset()
                pending = ids[-cfg.context_length :]
            x = torch.tensor([pending], dtype=torch.long, device=device)
            logits = model(x, kv_cache=cache)[0, -1]
            next_id = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None and next_id == eos_id:
                return
            ids.append(next_id)
            pending = [next_id]
            yield next_id
    finally:
        model.train(was_training)


def generate(
    model: TransformerLM,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """The new tokens (prompt excluded) as a list; same arguments as generate_stream."""
    ids = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    return list(_sample_stream(model, ids, max_new_tokens, temperature, top_k, top_p, eos_id, seed))
