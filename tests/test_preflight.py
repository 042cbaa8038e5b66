"""Checks before any work: a run or cache dir that cannot be written is one line before the tokenizer or the
data are touched (on a fresh run and on a resume); a run that fails on bad input leaves nothing in the
cache."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest
from trainer_runs import tiny_train_args

from dist_llm.train import main
from dist_llm.training.preflight import PreflightError, check_writable


def _read_only(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Creating a file in `directory` fails as on a read-only mount (tests may run as root, and cannot
    count on mounting one)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == directory.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_a_read_only_run_dir_is_one_line_before_any_work(tiny_data, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "mount").mkdir()
    _read_only(monkeypatch, tmp_path / "mount")
    run_dir, cache = tmp_path / "mount" / "run", tmp_path / "fresh_cache"
    args = tiny_train_args(tiny_data, run_dir, f"--run.cache_dir={cache}")
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert _errors(err) == [f"error: run dir {run_dir} is not writable (read-only file system)"]
    assert "tokenizer:" not in out and "data:" not in out and "Traceback" not in err
    assert not cache.exists() and not run_dir.exists()


def test_a_resume_into_a_read_only_run_dir_is_the_same_line(tiny_data, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(tiny_train_args(tiny_data, run_dir, "--checkpoint.interval=4")) == 0
    metrics = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    _read_only(monkeypatch, run_dir)
    assert main(tiny_train_args(tiny_data, run_dir, "--resume", "auto", "--train.max_steps=12")) == 1
    out, err = capsys.readouterr()
    assert _errors(err) == [f"error: run dir {run_dir} is not writable (read-only file system)"]
    assert "resume:" not in out and "Traceback" not in err  # before truncate_metrics, before the data
    assert (run_dir / "metrics.jsonl").read_text() == metrics


def test_a_cache_dir_under_a_file_is_named(tiny_data, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    cache = tmp_path / "afile" / "cache"
    assert main(tiny_train_args(tiny_data, tmp_path / "run", f"--run.cache_dir={cache}")) == 1
    assert _errors(capsys.readouterr().err) == [
        f"error: cache dir {cache} is not writable ({tmp_path / 'afile'} is a file, not a directory)"]
    assert not (tmp_path / "run").exists()


def test_check_writable_leaves_nothing_behind(tmp_path) -> None:
    check_writable(tmp_path / "a" / "b", "run dir")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PreflightError, match="is a file, not a directory"):
        (tmp_path / "f").write_text("")
        check_writable(tmp_path / "f", "run dir")


def test_a_run_that_fails_on_bad_input_leaves_nothing_in_the_cache(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    args = tiny_train_args({"corpus": bad, "cache": cache}, run_dir)
    assert main(args) == 1
    assert "not valid UTF-8" in capsys.readouterr().err
    assert not cache.exists() and not run_dir.exists()  # no empty cache/tokenizers/<hash>/, no run dir
    (cache / "tokenizers" / "someone_elses").mkdir(parents=True)  # a cache in use: only ours is removed
    assert main(args) == 1
    assert [p.name for p in (cache / "tokenizers").iterdir()] == ["someone_elses"]
