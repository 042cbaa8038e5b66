"""Checkpoints that cannot be read or written: --resume auto falls back past any unreadable file (with the
reason), an explicit path stays an error; a full disk names the path and the space needed and keeps the
previous checkpoint; a checkpoint without its weights never gets a COMPLETE manifest."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from trainer_runs import tiny_train_args

from dist_llm.checkpoint import store
from dist_llm.checkpoint.store import (
    CONFIG,
    MODEL_FILE,
    CheckpointError,
    finalize_checkpoint,
    list_complete,
    new_temp_dir,
    verify_checkpoint,
    write_checkpoint,
)
from dist_llm.config import parse_args
from dist_llm.training import state
from dist_llm.training.state import CheckpointWriter, choose_checkpoint


def _config(run_dir: Path, resume: str):
    return parse_args([f"--run.dir={run_dir}", "--resume", resume])


def _write(run_dir: Path, step: int) -> Path:
    config = _config(run_dir, "auto").to_dict()
    return write_checkpoint(run_dir / "checkpoints", step, model_state={"w": torch.full((64,), float(step))},
                            optimizer_state=None, trainer_state={"step": step}, config=config)


def _unreadable(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Reading `target` fails as an unreadable file does for a non-root user (tests may run as root, for
    whom chmod 000 changes nothing)."""
    real = store.file_sha256

    def sha256(path: Path) -> str:
        if Path(path) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(store, "file_sha256", sha256)


def test_resume_auto_falls_back_past_an_unreadable_file(tmp_path: Path, monkeypatch) -> None:
    older, newer = _write(tmp_path, 1), _write(tmp_path, 2)
    _unreadable(monkeypatch, newer / MODEL_FILE)
    said: list[str] = []
    assert choose_checkpoint(_config(tmp_path, "auto"), said.append) == str(older)
    assert said == [f"resume: {newer / MODEL_FILE}: cannot be read (Permission denied); falling back to the "
                    "previous complete checkpoint"]
    # named explicitly: no silent fallback, a one-line error naming the file
    expected = f"{newer / MODEL_FILE}: cannot be read (Permission denied)"
    with pytest.raises(CheckpointError, match=f"^{re.escape(expected)}$"):
        choose_checkpoint(_config(tmp_path, str(newer)), said.append)


def test_resume_auto_falls_back_past_a_sharded_checkpoints_missing_or_corrupt_shard(tmp_path: Path) -> None:
    older = _write(tmp_path, 1)
    config = _config(tmp_path, "auto").to_dict()
    said: list[str] = []
    for step, damage in ((2, "delete"), (3, "rewrite")):
        tmp = new_temp_dir(tmp_path / "checkpoints", step)
        (tmp / "shards").mkdir()
        save_file({"w": torch.ones(64)}, str(tmp / "shards" / "shard-00000.safetensors"))
        store.write_json_durably(tmp / CONFIG, config)
        final = finalize_checkpoint(tmp, tmp_path / "checkpoints", step, fmt="sharded")
        shard = final / "shards" / "shard-00000.safetensors"
        if damage == "delete":
            shard.unlink()
        else:  # same size, other content: only the checksum tells
            save_file({"w": torch.zeros(64)}, str(shard))
    assert choose_checkpoint(_config(tmp_path, "auto"), said.append) == str(older)
    assert "shard-00000.safetensors: sha256 checksum does not match" in said[0]
    assert "shard-00000.safetensors: missing from the checkpoint" in said[1]


def test_a_full_disk_names_the_path_and_the_space_and_keeps_the_previous_checkpoint(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    previous = _write(tmp_path, 1)
    real = store.save_file

    def disk_fills_up(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # part of it was written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "save_file", disk_fills_up)
    with pytest.raises(CheckpointError) as raised:
        _write(tmp_path, 2)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'checkpoints' / 'step_00000002'}: no space left on the device "
                              "while writing this checkpoint: it needs about 0.0 MB, ")
    assert f"the previous checkpoint {previous} is untouched" in message
    assert list_complete(tmp_path / "checkpoints") == [previous]
    verify_checkpoint(previous)
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))  # nothing half-written left behind
    monkeypatch.setattr(store, "save_file", real)
    # safetensors reports the full disk as its own error, carrying the OS error's text
    from safetensors import SafetensorError

    def safetensors_full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(store, "save_file", safetensors_full)
    with pytest.raises(CheckpointError, match="no space left on the device"):
        _write(tmp_path, 3)


def test_a_checkpoint_without_its_weights_is_never_marked_complete(tmp_path: Path) -> None:
    # what a second writer deleting this one's temporary directory mid-write used to leave:
    # COMPLETE, and no weights
    tmp = new_temp_dir(tmp_path, 5)
    store.write_json_durably(tmp / CONFIG, {})
    with pytest.raises(CheckpointError, match="holds no weights"):
        finalize_checkpoint(tmp, tmp_path, 5)
    assert not (tmp_path / "step_00000005").exists()


def test_resume_auto_falls_back_past_a_manifest_without_the_weights(tmp_path: Path) -> None:
    # what two trainers writing one run dir left behind: COMPLETE listing everything but model.safetensors
    older, newer = _write(tmp_path, 1), _write(tmp_path, 2)
    manifest = json.loads((newer / "COMPLETE").read_text())
    (newer / MODEL_FILE).unlink()
    for key in ("files", "sha256"):
        del manifest[key][MODEL_FILE]
    (newer / "COMPLETE").write_text(json.dumps(manifest))
    said: list[str] = []
    assert choose_checkpoint(_config(tmp_path, "auto"), said.append) == str(older)
    assert said[0].startswith(f"resume: {newer / MODEL_FILE}: missing from the checkpoint")


def test_training_stops_on_a_full_disk_with_the_previous_checkpoint_intact(tiny_data, tmp_path, monkeypatch,
                                                                           capsys) -> None:
    from dist_llm.train import main

    run_dir = tmp_path / "run"
    real, calls = store._save_tensors, []

    def fills_at_the_second_checkpoint(path: Path, tensors) -> None:
        calls.append(path)
        if "step_00000004" in str(path.parent.name) or len(calls) > 2:  # 2 files per checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, tensors)

    monkeypatch.setattr(store, "_save_tensors", fills_at_the_second_checkpoint)
    code = main(tiny_train_args(tiny_data, run_dir, "--checkpoint.interval=2", "--train.max_steps=4"))
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "step_00000004: no space left on the device" in errors[0], err
    assert [p.name for p in list_complete(run_dir / "checkpoints")] == ["step_00000002"]
    verify_checkpoint(run_dir / "checkpoints" / "step_00000002")
    assert not (run_dir / "model.safetensors").exists()
    shutil.rmtree(run_dir)


def _failing_background_save(error: BaseException):
    """save_shards as an asynchronous DCP save that writes part of the shards, then fails in the
    background (the returned future carries the error, as DCP's does)."""

    def save_shards(directory: Path, tensors, process_group=None, asynchronous: bool = False):
        assert asynchronous
        (directory / "shards").mkdir()
        (directory / "shards" / "model-00001-of-00001.safetensors").write_bytes(b"partial")
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_exception(error)
        return future

    return save_shards


@pytest.mark.parametrize("failure", ["full disk", "other"])
def test_a_background_save_that_fails_removes_its_directory_and_names_a_full_disk(
        tmp_path: Path, monkeypatch, failure: str) -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    run_dir = tmp_path / "run"
    previous = _write(run_dir, 2)
    if failure == "full disk":  # DCP wraps each rank's error in a CheckpointException (a BaseException)
        error = CheckpointException("save", {0: (OSError(errno.ENOSPC, "No space left on device"), [])})
    else:
        error = RuntimeError("the storage went away")
    monkeypatch.setattr(state, "save_shards", _failing_background_save(error))
    model = torch.nn.Linear(512, 512)  # big enough that the size in MB is not 0.0
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    optimizer.step()
    writer = CheckpointWriter(_config(run_dir, "auto"), "sharded", asynchronous=True)
    writer.save(4, SimpleNamespace(model=model, sharded=True), optimizer, {"step": 4})
    with pytest.raises(CheckpointError) as raised:
        writer.wait()
    message = str(raised.value)
    if failure == "full disk":
        needed = (512 * 512 + 512) * 4 * 3  # float32 weights, exp_avg, exp_avg_sq (3.2 MB; + 2 step scalars)
        assert message.startswith(f"{run_dir / 'checkpoints' / 'step_00000004'}: no space left on the device")
        assert f"needs about {needed / 1e6:,.1f} MB" in message and "MB are free there" in message
        assert f"the previous checkpoint {previous} is untouched" in message
    else:
        assert message == "writing a checkpoint in the background failed: RuntimeError: the storage went away"
    # nothing half-written is left behind, the previous checkpoint is the newest complete one
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000002"]
    verify_checkpoint(previous)
    writer.wait()  # the error was raised once; nothing is pending any more
