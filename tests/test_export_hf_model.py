"""Export to HF Llama: transformers loads our run as LlamaForCausalLM and computes the same function."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="HF export tests need transformers (extra 'hf')")

from after_training_runs import END_OF_TEXT, make_run, random_model, train_tiny_tokenizer  # noqa: E402

from dist_llm.export.__main__ import main as export_main  # noqa: E402
from dist_llm.export.hf_llama import half_to_interleaved, interleaved_to_half  # noqa: E402
from dist_llm.model import generate  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    tokenizer = train_tiny_tokenizer(work)
    model = random_model(tokenizer.vocab_size)
    run = make_run(work / "run", tokenizer, model)
    assert export_main(["hf", "--run", str(run), "--out", str(work / "hf")]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(work / "hf").eval()
    return model, tokenizer, hf_model, work / "hf"


def test_loads_as_llama_with_our_sizes(exported):
    model, tokenizer, hf_model, hf_dir = exported
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    cfg, hf_cfg = model.config, hf_model.config
    assert (hf_cfg.hidden_size, hf_cfg.intermediate_size, hf_cfg.num_hidden_layers) == (32, 64, 2)
    assert (hf_cfg.num_attention_heads, hf_cfg.num_key_value_heads) == (4, 4)
    assert hf_cfg.max_position_embeddings == cfg.context_length
    assert hf_cfg.rms_norm_eps == cfg.norm_eps
    # The installed transformers must read our RoPE base (500, not its default 10000).
    theta = getattr(hf_cfg, "rope_parameters", None) or {"rope_theta": hf_cfg.rope_theta}
    assert theta["rope_theta"] == 500.0
    assert hf_cfg.tie_word_embeddings is False
    assert hf_cfg.eos_token_id == tokenizer.token_id(END_OF_TEXT)
    assert hf_model.dtype == torch.float32
    # The lm_head is a separate tensor, not the embedding table.
    assert hf_model.lm_head.weight.data_ptr() != hf_model.model.embed_tokens.weight.data_ptr()
    written = json.loads((hf_dir / "config.json").read_text())
    assert written["architectures"] == ["LlamaForCausalLM"]
    assert sorted(p.name for p in hf_dir.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                         "tokenizer_config.json"]


def test_hf_logits_equal_ours(exported):
    model, _, hf_model, _ = exported
    ids = torch.randint(0, model.config.vocab_size, (3, model.config.context_length),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf_model(ids).logits
    max_diff = (ours - theirs).abs().max().item()
    assert max_diff < 1e-4, f"max |logit diff| = {max_diff:.3g}"
    assert ours.abs().max() > 0.1  # not trivially equal near-zero logits


def test_greedy_generation_equals_ours(exported):
    model, tokenizer, hf_model, _ = exported
    prompt = tokenizer.encode("The fox")
    eos = tokenizer.token_id(END_OF_TEXT)
    # Stay within the context window: past it ours slides the window, HF's RoPE extrapolates.
    max_new = model.config.context_length - len(prompt)
    ours = generate(model, prompt, max_new_tokens=max_new, temperature=0.0, eos_id=eos)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                                eos_token_id=eos, pad_token_id=eos)
    theirs = out[0, len(prompt):].tolist()
    if theirs and theirs[-1] == eos:  # HF keeps the eos it stopped at; ours does not yield it
        theirs = theirs[:-1]
    assert theirs == ours
    assert len(ours) > 0


def test_rope_permutation_is_an_exact_inverse_pair():
    w = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)  # 2 heads of head_dim 4
    half = interleaved_to_half(w, num_heads=2)
    # Within each head: rows (0, 2, 1, 3): even rows first, then odd rows.
    assert half[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]
    assert torch.equal(half_to_interleaved(half, num_heads=2), w)
