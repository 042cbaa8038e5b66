"""dist_llm.atomic_io: a write either replaces the file completely or leaves the old one untouched."""

import json

import pytest

from dist_llm.atomic_io import atomic_write, atomic_write_json


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
