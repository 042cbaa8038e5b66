"""Faults: crash mid-checkpoint, corrupted or foreign checkpoints, non-finite loss, stop signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_runs import flip_tensor_byte, read_jsonl, tiny_train_args, write_tiny_corpus

from dist_llm.checkpoint import CRASH_ENV, find_latest_checkpoint
from dist_llm.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _subprocess_train(args, extra_env=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "dist_llm.train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _steps(run_dir):
    return [p.name for p in sorted((run_dir / "checkpoints").glob("step_*"))]


def test_crash_mid_checkpoint_leaves_previous_one_for_resume_auto(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--checkpoint.interval=4", "--optim.decay_steps=8")
    proc = _subprocess_train(args, {CRASH_ENV: "8"})  # dies while writing the step-8 checkpoint
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 43, err[-2000:]
    assert _steps(run_dir) == ["step_00000004"]
    assert list((run_dir / "checkpoints").glob(".tmp_step_00000008_*"))  # the half-written one
    assert not (run_dir / "model.safetensors").exists()

    assert main([*args, "--resume=auto"]) == 0
    out = capsys.readouterr().out
    assert "continuing from" in out and "step_00000004" in out
    assert _steps(run_dir) == ["step_00000004", "step_00000008"]
    assert not list((run_dir / "checkpoints").glob(".tmp_*"))
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    assert steps == list(range(1, 9))  # the crashed run's lines after step 4 were replaced, not duplicated


def _run_with_two_checkpoints(tiny_data, run_dir: Path) -> tuple[list[str], Path]:
    """An 8-step run checkpointed at steps 4 and 8; returns its arguments and the newest checkpoint."""
    args = tiny_train_args(tiny_data, run_dir, "--checkpoint.interval=4", "--optim.decay_steps=12")
    assert main(args) == 0
    return args, find_latest_checkpoint(run_dir / "checkpoints")


def test_corrupted_checkpoint_falls_back_to_previous(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args, latest = _run_with_two_checkpoints(tiny_data, run_dir)
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, e.g. by a full disk
    capsys.readouterr()

    assert main([*args, "--resume=auto", "--train.max_steps=12"]) == 0
    out = capsys.readouterr().out
    assert f"{weights}: truncated" in out and "falling back to the previous complete checkpoint" in out
    assert "continuing from" in out and "step_00000004 at step 4" in out

    # An explicitly named broken checkpoint is an error naming the file, not a silent fallback.
    (run_dir / "checkpoints" / "step_00000012" / "optimizer.json").write_text("{")
    code = main([*args, f"--resume={run_dir / 'checkpoints' / 'step_00000012'}", "--train.max_steps=16"])
    assert code == 1
    assert "optimizer.json" in capsys.readouterr().err


def test_flipped_byte_in_checkpoint_fails_its_checksum(tiny_data, tmp_path, capsys):
    args, latest = _run_with_two_checkpoints(tiny_data, tmp_path / "run")
    weights = latest / "model.safetensors"
    flip_tensor_byte(weights)  # same size, readable header: the damaged weights would load
    capsys.readouterr()

    # Named explicitly: an error naming the file, before any work.
    assert main([*args, f"--resume={latest}", "--train.max_steps=12"]) == 1
    assert f"error: {weights}: sha256 checksum does not match" in capsys.readouterr().err

    assert main([*args, "--resume=auto", "--train.max_steps=12"]) == 0
    out = capsys.readouterr().out
    assert f"{weights}: sha256 checksum does not match" in out
    assert "falling back to the previous complete checkpoint" in out
    assert "continuing from" in out and "step_00000004 at step 4" in out


def test_resume_from_a_missing_path_says_it_does_not_exist(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--train.max_steps=4", "--checkpoint.interval=2",
                           "--checkpoint.keep_last=1")
    assert main(args) == 0
    capsys.readouterr()
    pruned = run_dir / "checkpoints" / "step_00000002"  # deleted by keep_last
    assert main([*args, f"--resume={pruned}"]) == 1
    err = capsys.readouterr().err
    assert f"error: --resume {pruned}: the path does not exist" in err
    assert "step_00000004" in err  # the checkpoints that are there
    assert main([*args, f"--resume={tmp_path / 'nope'}"]) == 1
    assert "nope: the path does not exist" in capsys.readouterr().err


def test_model_config_mismatch_names_the_keys(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(tiny_train_args(tiny_data, run_dir, "--train.max_steps=3")) == 0
    capsys.readouterr()
    code = main(tiny_train_args(tiny_data, run_dir, "--train.max_steps=6", "--model.d_ff=96",
                                "--model.num_layers=1", "--resume=auto"))
    assert code == 1
    err = capsys.readouterr().err
    assert "model config differs" in err
    assert "d_ff: checkpoint 64 vs run 96" in err and "num_layers: checkpoint 2 vs run 1" in err


def test_a_missing_device_names_the_config_key(tmp_path, capsys):
    assert main([f"--run.dir={tmp_path / 'run'}", "--dist.device=cuda:99"]) == 1
    assert capsys.readouterr().err.startswith("error: dist.device='cuda:99': ")


def test_resume_on_other_data_is_a_clean_error(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--train.max_steps=4")
    assert main(args) == 0
    other = write_tiny_corpus(tmp_path / "other.txt", num_docs=150, seed=1)
    capsys.readouterr()
    # The run's own tokenizer, so that only the data differs.
    code = main([*args, f"--data.inputs={other}", f"--tokenizer.path={run_dir / 'tokenizer'}",
                 "--train.max_steps=8", "--resume=auto"])
    assert code == 1
    err = capsys.readouterr().err
    checkpoint = run_dir / "checkpoints" / "step_00000004"
    assert err.startswith(f"error: {checkpoint}: the training data differs from the data the run was "
                          "trained on")
    assert f"--run.init_from={checkpoint}" in err
    assert len(err.splitlines()) == 1  # one line, no traceback


def test_resume_tells_data_by_content_not_by_path_or_size(tiny_data, tmp_path, capsys):
    """Moved but equal data resumes; two documents swapped (same file name, same token count, so the
    same number of windows) is other data, told by the content fingerprint."""
    from dist_llm.data.prepare import is_validation_doc

    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--train.max_steps=4")
    assert main(args) == 0
    corpus = tiny_data["corpus"]
    moved = tmp_path / "moved" / corpus.name
    moved.parent.mkdir()
    moved.write_bytes(corpus.read_bytes())
    assert main([*args, f"--data.inputs={moved}", "--train.max_steps=6", "--resume=auto"]) == 0

    docs = corpus.read_text(encoding="utf-8").split("\n<|endoftext|>\n")
    # Two neighbours that both stay in train (val takes whole documents by hash of name and index).
    i = next(i for i in range(len(docs) - 1)
             if not any(is_validation_doc(corpus.name, j, 0.1) for j in (i, i + 1)))
    docs[i], docs[i + 1] = docs[i + 1], docs[i]
    swapped = tmp_path / "swapped" / corpus.name
    swapped.parent.mkdir()
    swapped.write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    capsys.readouterr()
    assert main([*args, f"--data.inputs={swapped}", "--train.max_steps=8", "--resume=auto"]) == 1
    err = capsys.readouterr().err
    assert "the training data differs from the data the run was trained on" in err
    assert "their content or preparation changed" in err


def test_resume_on_other_data_keeps_the_runs_tokenizer(tiny_data, tmp_path, capsys):
    """Without tokenizer.path a resume takes the run's tokenizer instead of training one on the new
    inputs, which could only fail later as 'another tokenizer'; the data difference is what it reports."""
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--train.max_steps=4")
    assert main(args) == 0
    other = write_tiny_corpus(tmp_path / "other.txt", num_docs=150, seed=1)
    capsys.readouterr()
    code = main([*args, f"--data.inputs={other}", "--train.max_steps=8", "--resume=auto"])
    assert code == 1
    captured = capsys.readouterr()
    assert "the training data differs from the data the run was trained on" in captured.err
    assert "tokenizer: training" not in captured.out


@pytest.fixture
def nan_at_micro_step(monkeypatch):
    """Make the training loss NaN at the given (1-based) training micro-step."""
    import dist_llm.model.transformer

    real = dist_llm.model.transformer.linear_cross_entropy  # the training loss (TransformerLM, targets=)

    def install(bad_call: int):
        calls = {"n": 0}

        def flaky(*args, **kwargs):
            loss = real(*args, **kwargs)
            if torch.is_grad_enabled():  # training, not evaluation
                calls["n"] += 1
                if calls["n"] == bad_call:
                    return loss * float("nan")
            return loss

        monkeypatch.setattr(dist_llm.model.transformer, "linear_cross_entropy", flaky)

    return install


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_data, tmp_path, capsys, nan_at_micro_step):
    run_dir = tmp_path / "run"
    nan_at_micro_step(5)  # 2 micro-steps per step: step 3
    assert main(tiny_train_args(tiny_data, run_dir, "--checkpoint.interval=2")) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 3" in err and "train.skip_nonfinite" in err
    assert _steps(run_dir) == ["step_00000002"]
    state = json.loads((run_dir / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["step"] == 2
    assert not (run_dir / "model.safetensors").exists()


def test_non_finite_loss_can_be_skipped(tiny_data, tmp_path, nan_at_micro_step):
    run_dir = tmp_path / "run"
    nan_at_micro_step(5)
    assert main(tiny_train_args(tiny_data, run_dir, "--train.skip_nonfinite=1")) == 0
    state = json.loads((run_dir / "checkpoints" / "step_00000008" / "trainer_state.json").read_text())
    assert state["nonfinite_skipped"] == 1
    logged = [r["train_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    assert len(logged) == 8 and all(loss == loss for loss in logged)  # no NaN was logged


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_signal_checkpoints_and_exits_cleanly(tiny_data, tmp_path, sig):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--train.max_steps=5000", "--eval.interval=0")
    proc = _subprocess_train(args)
    deadline = time.monotonic() + 120
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and any("train_loss" in r for r in read_jsonl(metrics))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert f"received {sig.name}" in out
    latest = find_latest_checkpoint(run_dir / "checkpoints")
    step = json.loads((latest / "trainer_state.json").read_text())["step"]
    assert 1 <= step < 5000
    assert not (run_dir / "model.safetensors").exists()  # stopped early: no final model yet


def test_a_model_vocab_below_the_tokenizers_is_refused_before_tokenizing(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(tiny_train_args(tiny_data, run_dir, "--train.max_steps=4")) == 0
    fresh = write_tiny_corpus(tmp_path / "fresh.txt", num_docs=50, seed=3)  # not prepared before
    capsys.readouterr()
    code = main(tiny_train_args(tiny_data, tmp_path / "run2", f"--data.inputs={fresh}",
                                f"--tokenizer.path={run_dir / 'tokenizer'}", "--model.vocab_size=300"))
    assert code == 2
    captured = capsys.readouterr()
    assert "'model.vocab_size' (300) is smaller than the tokenizer's vocabulary (320 tokens" in captured.err
    assert "prepared " not in captured.out  # the corpus was not tokenized first


def test_a_config_error_is_printed_by_rank_zero_only(tmp_path, capsys, monkeypatch):
    """Under torchrun every rank parses the same command line; one copy of its error is enough."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")  # srun without torchrun
    assert main([f"--run.dir={tmp_path / 'run'}", "--optim.lr=1e-3"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "1")
    assert main([f"--run.dir={tmp_path / 'run'}", "--optim.lr=1e-3"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main([f"--run.dir={tmp_path / 'run'}", "--optim.lr=1e-3"]) == 2
    assert "unknown config key 'optim.lr'" in capsys.readouterr().err
