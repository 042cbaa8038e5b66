"""run.init_from: continued pretraining starts from the source's weights (a trainer run, a checkpoint or an
import-hf directory) with a fresh optimizer, schedule and data position; mismatches are clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from trainer_runs import read_jsonl, tiny_train_args, train_losses, write_tiny_corpus

from dist_llm.checkpoint.pretrained import load_pretrained
from dist_llm.config import parse_args
from dist_llm.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("source") / "run"
    assert main(tiny_train_args(tiny_data, run_dir, "--train.max_steps=4")) == 0
    return run_dir


def _first_step_loss(args: list[str], model: torch.nn.Module) -> float:
    """The loss `model` gets on the micro-batches of a fresh run's first optimizer step (single process)."""
    from dist_llm.data import MemmapTokens, ShardedBatchLoader
    from dist_llm.training.pipeline import prepare_data
    from dist_llm.training.plan import make_plan

    cfg = parse_args(args)
    tokenizer, data_dir = prepare_data(cfg)  # cached: the files the run itself used
    train = MemmapTokens(data_dir, "train", cfg.model.context_length, tokenizer.fingerprint)
    plan = make_plan(cfg, 1, len(train))
    loader = ShardedBatchLoader(train, plan.micro_batch_size, 0, 1, seed=cfg.run.seed, device="cpu")
    total = 0.0
    with torch.no_grad():
        for _ in range(plan.accum_steps):
            x, y = loader.next_batch()
            logits = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    return total / plan.accum_steps


def test_init_from_a_run_dir_starts_from_its_weights(tiny_data, source_run, tmp_path, capsys):
    args = tiny_train_args(tiny_data, tmp_path / "cont", "--train.max_steps=3",
                           f"--run.init_from={source_run}")
    assert main(args) == 0
    assert f"init: weights from {source_run}" in capsys.readouterr().out
    source_model, _, _ = load_pretrained(run=source_run)
    assert train_losses(tmp_path / "cont")[1] == pytest.approx(_first_step_loss(args, source_model), rel=1e-5)
    # The same validation windows give the source's last validation loss before any update.
    source_val = [r["val_loss"] for r in read_jsonl(source_run / "metrics.jsonl") if "val_loss" in r][-1]
    first_val = [r for r in read_jsonl(tmp_path / "cont" / "metrics.jsonl") if "val_loss" in r][0]
    assert first_val["step"] == 0 and first_val["val_loss"] == pytest.approx(source_val, rel=1e-6)
    # Fresh optimizer and schedule: the run counts its own steps from 0.
    assert sorted(train_losses(tmp_path / "cont")) == [1, 2, 3]


def test_init_from_a_checkpoint_with_another_model_config_names_the_keys(tiny_data, source_run, tmp_path,
                                                                          capsys):
    checkpoint = source_run / "checkpoints" / "step_00000004"
    args = tiny_train_args(tiny_data, tmp_path / "cont", f"--run.init_from={checkpoint}", "--model.d_ff=96",
                           "--model.num_layers=3")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.d_ff: 64" in err and "96" in err and "model.num_layers: 2" in err
    assert not (tmp_path / "cont").exists()  # rejected before any work


def test_init_from_a_missing_dir_is_a_config_error(tiny_data, tmp_path, capsys):
    args = tiny_train_args(tiny_data, tmp_path / "cont", f"--run.init_from={tmp_path / 'nope'}")
    assert main(args) == 2
    assert "run.init_from" in capsys.readouterr().err


def test_a_checkpoint_found_by_resume_wins_over_init_from(tiny_data, source_run, tmp_path, capsys):
    run_dir = tmp_path / "cont"
    common = (f"--run.init_from={source_run}", "--optim.decay_steps=4", "--optim.warmup_steps=1")
    assert main(tiny_train_args(tiny_data, run_dir, *common, "--train.max_steps=2")) == 0
    capsys.readouterr()
    assert main(tiny_train_args(tiny_data, run_dir, *common, "--train.max_steps=4", "--resume=auto")) == 0
    out = capsys.readouterr().out
    assert "wins over run.init_from" in out and "init: weights from" not in out
    events = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "event" in r]
    assert [e["event"] for e in events] == ["init_from", "resume"] and events[1]["from_step"] == 2
    assert sorted(train_losses(run_dir)) == [1, 2, 3, 4]


def test_init_from_an_imported_hf_llama(tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs transformers (extra 'hf')")
    from after_training_runs import END_OF_TEXT, train_tiny_tokenizer

    from dist_llm.export.__main__ import main as export_main
    from dist_llm.export.hf_tokenizer import write_hf_tokenizer

    tokenizer = train_tiny_tokenizer(tmp_path)
    corpus = write_tiny_corpus(tmp_path / "docs.txt", num_docs=100)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32, rms_norm_eps=1e-5,
        rope_theta=500.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    write_hf_tokenizer(tokenizer, tmp_path / "llama", 32, END_OF_TEXT)
    imported = tmp_path / "imported"
    assert export_main(["import-hf", "--model", str(tmp_path / "llama"), "--out", str(imported)]) == 0
    args = [f"--run.dir={tmp_path / 'cont'}", f"--run.cache_dir={tmp_path / 'cache'}",
            f"--run.init_from={tmp_path / 'imported'}", f"--data.inputs={corpus}",
            "--data.val_fraction=0.1", f"--model.vocab_size={tokenizer.vocab_size}",
            "--model.context_length=32",
            "--model.d_model=32", "--model.num_layers=2", "--model.num_heads=4", "--model.d_ff=64",
            "--model.rope_theta=500", "--train.micro_batch_size=2", "--train.global_batch_tokens=128",
            "--train.max_steps=2", "--optim.warmup_steps=1", "--eval.num_windows=2", "--eval.batch_size=2",
            "--eval.sample_tokens=0", "--log.interval=1", "--log.progress_bar=false", "--data.num_workers=1"]
    assert main(args) == 0
    # No tokenizer was configured: the run used the imported model's own.
    imported_model, imported_tokenizer, _ = load_pretrained(run=tmp_path / "imported")
    from dist_llm.tokenizer import Tokenizer

    assert Tokenizer.load(tmp_path / "cont" / "tokenizer").fingerprint == imported_tokenizer.fingerprint
    assert train_losses(tmp_path / "cont")[1] == pytest.approx(
        _first_step_loss([*args, f"--tokenizer.path={tmp_path / 'imported' / 'tokenizer'}"], imported_model),
        rel=1e-5)
