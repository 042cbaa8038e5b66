"""Finding inputs and cutting them into chunks on document or safe line boundaries."""

from __future__ import annotations

import gzip
import random

import pytest

from dist_llm.data.sources import DataError, iter_chunks, resolve_inputs, split_chunk

SEP = "<|endoftext|>"


def random_docs(rng: random.Random, n: int) -> list[str]:
    """Multi-line documents whose line breaks are mostly safe cut points ('x\\ny' or 'x\\n\\ny')."""
    words = ["the", "cat", "Hello,", "world!", "x=1;", "é", "naïve", "日本", "  indented", "it's", "42", "\t"]
    docs = []
    for _ in range(n):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))).strip() or "ok"
                 for _ in range(rng.randint(1, 30))]
        docs.append(rng.choice(["\n", "\n\n"]).join(lines))
    return docs


def test_chunks_reassemble_the_file_and_end_on_boundaries(tmp_path):
    text = "\n".join(d + "\n" + SEP for d in random_docs(random.Random(0), 80))
    path = tmp_path / "a.txt"
    path.write_text(text, encoding="utf-8")
    chunks = list(iter_chunks(path, 256, SEP))
    assert len(chunks) > 10
    assert b"".join(c.data for c in chunks) == text.encode()
    # over 256 bytes only where a document has no cut point within 256 bytes (then the window doubles)
    assert max(len(c.data) for c in chunks) <= 512
    assert sum(len(c.data) <= 256 for c in chunks) >= 0.9 * len(chunks)
    for prev, c in zip(chunks, chunks[1:], strict=False):
        assert c.start == prev.start + len(prev.data) and c.start_kind == prev.end_kind
        if prev.end_kind == "sep":
            assert prev.data.endswith(SEP.encode())
        else:  # a safe line cut: printable ASCII, newline, (newline,) printable ASCII
            assert prev.end_kind == "mid" and prev.data.endswith(b"\n") and prev.data[-2:-1].isascii()
            assert not prev.data[-2:-1].isspace() and not c.data[:1].isspace() or c.data[:1] == b"\n"
    assert chunks[-1].end_kind == "file"


def test_document_without_any_cut_point_becomes_one_larger_chunk(tmp_path):
    path = tmp_path / "one_line.txt"
    path.write_text("word " * 200 + SEP + "short\nline\n" * 100, encoding="utf-8")
    chunks = list(iter_chunks(path, 100, SEP))
    # the search window doubles (100, 200, ..., 1600) until it holds a boundary: the separator or a
    # later safe line break
    assert 1000 + len(SEP) <= len(chunks[0].data) <= 1600
    assert b"".join(c.data for c in chunks) == path.read_bytes()
    assert all(len(c.data) <= 100 for c in chunks[1:])


def test_gzip_chunks_equal_plain_chunks(tmp_path):
    text = "\n".join(d + "\n" + SEP for d in random_docs(random.Random(1), 30))
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "p.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    plain = [(c.data, c.start_kind, c.end_kind) for c in iter_chunks(tmp_path / "p.txt", 300, SEP)]
    packed = [(c.data, c.start_kind, c.end_kind) for c in iter_chunks(tmp_path / "p.txt.gz", 300, SEP)]
    assert plain == packed


def test_document_whitespace_rules(tmp_path):
    path = tmp_path / "ws.txt"
    path.write_text(f"a\n{SEP}\nb\n\n{SEP}{SEP}  \n{SEP}\r\nc\r\n{SEP}d\n", encoding="utf-8")
    docs = [(i, text) for c in iter_chunks(path, 4096, SEP) for i, text, _ in split_chunk(c, SEP)]
    assert docs == [(0, "a"), (1, "b\n"), (4, "c"), (5, "d")]


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n\n{"title": "no text"}\n', encoding="utf-8")
    chunk = next(iter_chunks(path, 4096, SEP))
    with pytest.raises(DataError, match=r"d\.jsonl:3: expected a JSON object with a \"text\" field"):
        list(split_chunk(chunk, SEP))
    path.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:1: \"text\" must be a string, got int"):
        list(split_chunk(next(iter_chunks(path, 4096, SEP)), SEP))
    path.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        list(split_chunk(next(iter_chunks(path, 4096, SEP)), SEP))


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello\n" * 100 + b"caf\xe9 au lait\n")
    chunks = list(iter_chunks(path, 128, SEP))
    with pytest.raises(DataError, match=r"bad\.txt: invalid UTF-8 at byte offset 603 .*replace-invalid-utf8"):
        [piece for c in chunks for piece in split_chunk(c, SEP)]
    text = "".join(piece for c in chunks for _, piece, _ in split_chunk(c, SEP, replace_invalid_utf8=True))
    assert "caf\ufffd au lait" in text


def test_invalid_utf8_in_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' * 20 + b'{"text": "caf\xe9"}\n')
    chunks = list(iter_chunks(path, 64, SEP))  # several chunks: the line is counted from the file start
    assert len(chunks) > 1
    with pytest.raises(DataError, match=r"bad\.jsonl:21: invalid UTF-8 at byte offset 313 "):
        [piece for c in chunks for piece in split_chunk(c, SEP)]


@pytest.mark.parametrize(("name", "content"), [("bom.txt", f"\ufeffhello{SEP}world"),
                                               ("bom.jsonl", '\ufeff{"text": "hello"}\n{"text": "world"}\n')])
def test_a_byte_order_mark_is_not_part_of_the_first_document(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    docs = [text for c in iter_chunks(path, 4096, SEP) for _, text, _ in split_chunk(c, SEP)]
    assert docs == ["hello", "world"]


def test_resolve_inputs_dirs_globs_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.txt.gz", "notes.md", ".hidden.txt"):
        (tmp_path / name).write_bytes(b"")
    found = resolve_inputs([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jsonl", "b.txt", "sub/c.txt.gz"]
    assert resolve_inputs([str(tmp_path / "*.txt"), tmp_path / "b.txt"]) == [tmp_path / "b.txt"]
    with pytest.raises(DataError, match="no such file"):
        resolve_inputs([tmp_path / "missing.txt"])
    with pytest.raises(DataError, match=r"notes\.md: unsupported input type"):
        resolve_inputs([tmp_path / "notes.md"])
    with pytest.raises(DataError, match="glob matches no"):
        resolve_inputs([str(tmp_path / "*.parquet")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="directory holds no"):
        resolve_inputs([tmp_path / "empty"])


def test_unreadable_input_is_named(tmp_path):
    path = tmp_path / "broken.txt.gz"
    path.write_bytes(b"this is not gzip data" * 10)
    with pytest.raises(DataError, match=r"broken\.txt\.gz: cannot read input"):
        list(iter_chunks(path, 4096, SEP))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-12])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot read input"):
        list(iter_chunks(truncated, 4096, SEP))
