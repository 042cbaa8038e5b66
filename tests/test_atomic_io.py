"""dist_llm.utils.atomic_io: a write either replaces the file completely or leaves the old one untouched."""

import json
import os
import stat

import pytest
import torch
from after_training_runs import make_checkpoint, make_run, random_model, train_tiny_tokenizer

from dist_llm.checkpoint import save_checkpoint
from dist_llm.export.__main__ import main as export_main
from dist_llm.utils.atomic_io import atomic_write, atomic_write_json, make_temp_dir


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = atomic_write_json(tmp_path / "sub" / "config.json", {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    def half_then_crash(tmp):
        tmp.write_text('{"a": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]


def test_a_successful_write_replaces_the_file(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"v": "é"})
    atomic_write(tmp_path / "x.json", lambda tmp: tmp.write_bytes(b"new"))
    assert (tmp_path / "x.json").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask022", "umask077"])
def umask(request):
    """Set the process umask for one test; yields (file mode, dir mode) a plain open()/mkdir() would give."""
    mask, file_mode, dir_mode = request.param
    old = os.umask(mask)
    try:
        yield file_mode, dir_mode
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_permissions_a_plain_open_and_mkdir_give(tmp_path, umask):
    file_mode, dir_mode = umask
    assert mode(atomic_write(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"x"))) == file_mode
    assert mode(atomic_write_json(tmp_path / "b.json", {})) == file_mode
    assert mode(make_temp_dir(tmp_path, ".c.", ".partial")) == dir_mode


def test_run_checkpoint_and_export_outputs_respect_the_umask(tmp_path, umask):
    file_mode, dir_mode = umask
    tokenizer = train_tiny_tokenizer(tmp_path)
    model = random_model(tokenizer.vocab_size)
    run = make_run(tmp_path / "run", tokenizer, model)
    ckpt = make_checkpoint(run, 5, model)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()  # some optimizer state to save
    save_checkpoint(tmp_path / "ckpt.safetensors", model, optimizer, 3)
    save_checkpoint(tmp_path / "ckpt_dir", model, optimizer, 3)
    assert export_main(["hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    dirs = [run / "tokenizer", run / "checkpoints", ckpt, tmp_path / "ckpt_dir", tmp_path / "hf"]
    files = [p for d in [run, *dirs] for p in d.iterdir() if p.is_file()] + [tmp_path / "ckpt.safetensors"]
    expected = {"model.safetensors", "optimizer.safetensors", "config.json", "tokenizer.json", "COMPLETE"}
    assert {p.name for p in files} >= expected
    assert {str(p): oct(mode(p)) for p in files} == {str(p): oct(file_mode) for p in files}
    assert {str(p): oct(mode(p)) for p in dirs} == {str(p): oct(dir_mode) for p in dirs}
