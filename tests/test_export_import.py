"""import-hf: an HF Llama directory becomes a run directory; round trips are exact; bad input is refused."""

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="HF export tests need transformers (extra 'hf')")

from after_training_runs import (  # noqa: E402
    END_OF_TEXT,
    make_checkpoint,
    make_run,
    random_model,
    train_tiny_tokenizer,
)
from safetensors.torch import load_file, save_file  # noqa: E402

from dist_llm.checkpoint.pretrained import load_pretrained  # noqa: E402
from dist_llm.export.__main__ import main as export_main  # noqa: E402
from dist_llm.export.hf_tokenizer import write_hf_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small random LlamaForCausalLM saved by transformers itself, with our tokenizer as tokenizer.json."""
    work = tmp_path_factory.mktemp("hf")
    tokenizer = train_tiny_tokenizer(work)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32, rms_norm_eps=1e-5,
        rope_theta=500.0, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(work / "llama")
    write_hf_tokenizer(tokenizer, work / "llama", 32, END_OF_TEXT)
    return work / "llama", model.eval(), tokenizer


def test_imported_model_computes_what_hf_computes(hf_dir, tmp_path, capsys):
    src, hf_model, tokenizer = hf_dir
    assert export_main(["import-hf", "--model", str(src), "--out", str(tmp_path / "run")]) == 0
    assert "converted tokenizer.json" in capsys.readouterr().out
    model, our_tokenizer, _ = load_pretrained(run=tmp_path / "run")
    assert model.config.rope_theta == 500.0 and model.config.norm_eps == 1e-5
    assert our_tokenizer.fingerprint == tokenizer.fingerprint
    ids = torch.randint(0, tokenizer.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        max_diff = (model(ids) - hf_model(ids).logits).abs().max().item()
    assert max_diff < 1e-4, f"max |logit diff| = {max_diff:.3g}"


def test_import_then_export_round_trips_exactly(hf_dir, tmp_path):
    src, _, _ = hf_dir
    assert export_main(["import-hf", "--model", str(src), "--out", str(tmp_path / "run")]) == 0
    assert export_main(["hf", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    original, back = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(original) == sorted(back)
    for name, tensor in original.items():
        assert torch.equal(tensor, back[name]), name
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    original_config = json.loads((src / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert config[key] == original_config[key]


def test_export_then_import_round_trips_exactly(tmp_path):
    tokenizer = train_tiny_tokenizer(tmp_path)
    model = random_model(tokenizer.vocab_size, seed=3)
    run = make_run(tmp_path / "run", tokenizer, model)
    assert export_main(["hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert export_main(["import-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "again")]) == 0
    again = load_file(tmp_path / "again" / "model.safetensors")
    original = model.state_dict()
    assert sorted(again) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(tensor, again[name]), name


def _copy_with(src, dst, config_edit=None, tensors_edit=None):
    shutil.copytree(src, dst)
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    if tensors_edit is not None:
        tensors = load_file(dst / "model.safetensors")
        tensors_edit(tensors)
        save_file(tensors, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize(
    ("config_edit", "tensors_edit", "message"),
    [
        (lambda c: c.update(attention_bias=True), None, "attention biases"),
        (lambda c: c.update(mlp_bias=True), None, "MLP biases"),
        (lambda c: c.update(tie_word_embeddings=True), None, "tied input/output embeddings"),
        (lambda c: c.update(num_key_value_heads=2), None, "grouped-query attention"),
        (lambda c: c.update(hidden_act="gelu"), None, "hidden_act='gelu'"),
        (lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": 2.0}), None, "type 'linear'"),
        (lambda c: c.update(rope_scaling={"factor": 2.0}), None, "fields ['factor'] without a rope_type"),
        (lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), None, "'yarn'"),
        (lambda c: c.update(model_type="mistral"), None, "model_type is 'mistral'"),
        (None, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}), "bias tensors"),
        (None, lambda t: t.pop("lm_head.weight"), "no lm_head.weight"),
        (None, lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(65, 32)}), "has shape"),
    ],
)
def test_unsupported_hf_models_are_refused_with_the_reason(hf_dir, tmp_path, capsys, config_edit,
                                                           tensors_edit, message):
    src = _copy_with(hf_dir[0], tmp_path / "bad", config_edit, tensors_edit)
    assert export_main(["import-hf", "--model", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(src) in err
    assert err.count(str(src / "config.json")) <= 1  # the file is named once, not once per wrapping
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # no staging directory left behind


def test_pickle_only_model_is_refused(hf_dir, tmp_path, capsys):
    src = tmp_path / "pickled"
    src.mkdir()
    shutil.copy(hf_dir[0] / "config.json", src)
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    assert export_main(["import-hf", "--model", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "pickle files are not loaded" in capsys.readouterr().err


def test_import_without_tokenizer_json_says_so(hf_dir, tmp_path, capsys):
    src = _copy_with(hf_dir[0], tmp_path / "no_tok")
    (src / "tokenizer.json").unlink()
    assert export_main(["import-hf", "--model", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "tokenizer not converted" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


def test_output_directory_must_be_new_or_empty(hf_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    assert export_main(["import-hf", "--model", str(hf_dir[0]), "--out", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("keep me too")
    assert export_main(["import-hf", "--model", str(hf_dir[0]), "--out", str(tmp_path / "file")]) == 2
    assert f"{tmp_path / 'file'}: exists and is a file; choose a new --out" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me too"


def test_export_of_a_run_without_model_or_checkpoint_is_refused(tmp_path, capsys):
    tokenizer = train_tiny_tokenizer(tmp_path)
    run = tmp_path / "run"
    make_checkpoint(run, 100, random_model(tokenizer.vocab_size), complete=False)
    assert export_main(["hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "no final model (model.safetensors) and no complete checkpoint" in err
    assert not (tmp_path / "hf").exists()


def test_export_falls_back_to_newest_complete_checkpoint(tmp_path, capsys):
    tokenizer = train_tiny_tokenizer(tmp_path)
    run = tmp_path / "run"
    tokenizer.save(run / "tokenizer")
    make_checkpoint(run, 100, random_model(tokenizer.vocab_size, seed=1))
    newest = make_checkpoint(run, 200, random_model(tokenizer.vocab_size, seed=2))
    make_checkpoint(run, 300, random_model(tokenizer.vocab_size, seed=3), complete=False)
    assert export_main(["hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert f"using the newest complete checkpoint {newest}" in capsys.readouterr().out
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    expected = load_file(newest / "model.safetensors")
    assert torch.equal(exported["lm_head.weight"], expected["lm_head.weight"])


def test_export_of_a_non_llama_checkpoint_is_refused(tmp_path, capsys):
    tokenizer = train_tiny_tokenizer(tmp_path)
    model = random_model(tokenizer.vocab_size)
    run = make_run(tmp_path / "run", tokenizer, model)
    tensors = load_file(run / "model.safetensors")
    tensors["layers.0.attn.q_proj.bias"] = torch.zeros(32)
    save_file(tensors, run / "model.safetensors")
    assert export_main(["hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "not Llama-compatible" in err and "layers.0.attn.q_proj.bias" in err
