"""The one command end to end on a tiny config: data, tokenizer, training, checkpoint, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from trainer_runs import TEST_DEVICE, read_jsonl, tiny_train_args, train_losses

from dist_llm.checkpoint import find_latest_checkpoint, verify_checkpoint


def _run(args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "dist_llm.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_default_command_end_to_end(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--train.max_steps=30", "--eval.interval=10",
                           "--log.interval=5", "--eval.sample_prompt=The cat")
    proc = _run(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "max_steps 30;" in out and "full config: " in out  # a one-line summary, not the whole config
    assert '"max_steps": 30' not in out
    # a sample from the untrained model and one from the trained model, to compare
    assert "sample before training:\nThe cat" in out and "sample after 30 steps:\nThe cat" in out

    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
    # the references, logged once, printed at the start and next to the final figures at the end
    [refs] = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "unigram_bpb" in r]
    assert refs["step"] == 0 and 0 < refs["gzip_bpb"] < 8 and refs["unigram_bpb"] > 0
    assert f"unigram {refs['unigram_bpb']:.2f} bpb (token frequencies), gzip -9 {refs['gzip_bpb']:.2f}" in out
    assert (f"done: step 30, val loss {evals[-1]['val_loss']:.3f}, val bpb {evals[-1]['val_bpb']:.3f} "
            f"(unigram {refs['unigram_bpb']:.2f}, gzip {refs['gzip_bpb']:.2f})") in out
    assert evals[0]["val_bpb"] > refs["unigram_bpb"]  # an untrained model knows less than token frequencies
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0  # it learns
    for r in evals:
        assert r["val_ppl"] == pytest.approx(2.718281828 ** r["val_loss"], rel=1e-6)
        assert 0 < r["val_bpb"] < r["val_loss"]  # this tokenizer averages more than one byte per token
    logged = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    assert [r["step"] for r in logged] == [5, 10, 15, 20, 25, 30]
    assert {"tokens", "lr", "grad_norm", "tokens_per_s", "mfu", "time_s"} <= set(logged[0])
    if TEST_DEVICE.type == "cpu":
        assert logged[0]["mfu"] is None  # unknown peak on a CPU: null, not a guess
    else:  # a known GPU's datasheet peak (or null for an unknown one), never above 100%
        assert logged[0]["mfu"] is None or 0 < logged[0]["mfu"] < 1
    assert logged[-1]["tokens"] == 30 * 256

    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["train"]["max_steps"] == 30
    assert (run_dir / "model.safetensors").is_file()
    assert (run_dir / "tokenizer" / "dist_llm_tokenizer.json").is_file()
    assert (run_dir / "loss.png").stat().st_size > 1000
    latest = find_latest_checkpoint(run_dir / "checkpoints")
    assert latest.name == "step_00000030"
    verify_checkpoint(latest)
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == 30 and state["tokens"] == 30 * 256
    assert state["config"] == config and len(state["rng"]) == 1 and len(state["tokenizer_fingerprint"]) == 64

    # A second run reuses the cached tokenizer and token files, and keeps the first run's outputs.
    short_run = tiny_train_args(tiny_data, run_dir, "--train.max_steps=3", "--eval.sample_tokens=0")
    again = _run(short_run, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tokenizer: reusing" in again.stdout and "up to date" in again.stdout
    assert "previous outputs were moved to" in again.stdout
    assert list(run_dir.glob("replaced-*/checkpoints/step_00000030/COMPLETE"))
    old_config = json.loads(next(run_dir.glob("replaced-*/config.json")).read_text())
    assert old_config["train"]["max_steps"] == 30  # the first run's, set aside with its outputs


def test_config_error_exits_before_any_work(tmp_path):
    proc = _run(["--run.dir", str(tmp_path / "never"), "--optim.lr=1e-3"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "unknown config key 'optim.lr'; did you mean" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "never").exists()


def test_missing_input_file_is_named(tiny_data, tmp_path):
    args = tiny_train_args(tiny_data, tmp_path / "run", f"--data.inputs={tmp_path / 'nope.txt'}")
    proc = _run(args, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert f"'data.inputs': {tmp_path / 'nope.txt'} does not exist" in proc.stderr


def test_help_lists_every_key_with_a_typeable_default(capsys):
    from dist_llm.config import all_keys, parse_args
    from dist_llm.train import main

    assert main(["--help"]) == 0
    lines = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
    assert len(lines) == len(all_keys())
    shown = [line.split("  ")[0].replace("=''", "=") for line in lines]  # '' is what the shell passes
    assert parse_args(shown) == parse_args([])  # the listed defaults parse back to the defaults


@pytest.mark.usefixtures("one_thread")
def test_an_epoch_ending_at_or_just_before_the_last_step_gives_one_final_evaluation(tiny_data, tmp_path):
    run_dir = tmp_path / "epoch"
    args = tiny_train_args(tiny_data, run_dir, "--train.max_steps=0", "--train.num_epochs=1",
                           "--eval.interval=0", "--log.interval=100")
    from dist_llm.train import main

    assert main(args) == 0
    evals = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
    last = max(train_losses(run_dir))
    assert evals == [0, last], evals
