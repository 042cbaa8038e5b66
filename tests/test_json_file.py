"""dist_llm.utils.json_file.read_json: every way a JSON file can be unusable raises the caller's error class,
naming the file, what is wrong and the caller's hint."""

import pytest

from dist_llm.utils.json_file import read_json


class MyError(Exception):
    pass


def test_reads_json(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, "é"]}', encoding="utf-8")
    assert read_json(tmp_path / "a.json", MyError) == {"x": [1, "é"]}


@pytest.mark.parametrize(("make", "what"), [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "cannot read"),  # a directory where the file should be
    (lambda p: p.write_text("{oops"), "not valid JSON"),
    (lambda p: p.write_bytes(b'{"a": "\xff"}'), "not valid JSON"),
])
def test_unusable_file_raises_the_callers_error_naming_it(tmp_path, make, what):
    path = tmp_path / "meta.json"
    make(path)
    with pytest.raises(MyError, match=rf"meta\.json: {what}.*; re-run it$"):
        read_json(path, MyError, "; re-run it")
