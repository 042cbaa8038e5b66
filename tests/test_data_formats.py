"""Corpus formats as they come: Parquet, zstd text/JSONL, Dolma's .json.gz; text_field; bad records."""

from __future__ import annotations

import gzip
import json
import random
import sys

import pytest
from test_data_prepare import SEP, expected_ids, make_tokenizer, nasty_docs
from test_data_shards import read_stream

from dist_llm.data import DataError, prepare_corpus

_HOW = "pip install -e '.[test]' installs it (or the extras parquet and zstd)"
pa = pytest.importorskip("pyarrow", reason=f"Parquet input needs pyarrow: {_HOW}")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard", reason=f"zstd input needs zstandard: {_HOW}")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def write_parquet(path, docs, field="text", row_group_size=7):
    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=row_group_size)


def jsonl_bytes(docs, field="text") -> bytes:
    return "".join(json.dumps({field: d, "meta": {"i": i}}) + "\n" for i, d in enumerate(docs)).encode()


def zstd_bytes(data: bytes, frames: int = 1) -> bytes:
    """data compressed as `frames` concatenated zstd frames (as `zstd -c a b > ab.zst` writes)."""
    step = -(-len(data) // frames)
    return b"".join(zstandard.ZstdCompressor().compress(data[i:i + step]) for i in range(0, len(data), step))


@pytest.mark.parametrize("chunk_size", [64, 1 << 20])
def test_every_format_gives_each_document_then_the_separator(tmp_path, tok, chunk_size):
    rng = random.Random(chunk_size)
    names = ["a.parquet", "b.jsonl.zst", "c.txt.zst", "d.json.gz", "e.json.zst"]
    docs = {name: nasty_docs(rng, 23) for name in names}
    write_parquet(tmp_path / "a.parquet", docs["a.parquet"])
    (tmp_path / "b.jsonl.zst").write_bytes(zstd_bytes(jsonl_bytes(docs["b.jsonl.zst"]), frames=3))
    (tmp_path / "c.txt.zst").write_bytes(zstd_bytes(SEP.join(docs["c.txt.zst"]).encode()))
    (tmp_path / "d.json.gz").write_bytes(gzip.compress(jsonl_bytes(docs["d.json.gz"])))
    (tmp_path / "e.json.zst").write_bytes(zstd_bytes(jsonl_bytes(docs["e.json.zst"])))
    meta = prepare_corpus([tmp_path / n for n in names], tok, tmp_path / "out", workers=2, val_fraction=0.2,
                          chunk_size=chunk_size, progress=False)
    want = expected_ids(tok, docs, 0.2)
    assert want["train"] and want["val"]
    assert read_stream(tmp_path / "out", "train") == want["train"]
    assert read_stream(tmp_path / "out", "val") == want["val"]
    assert sum(meta["splits"][s]["num_documents"] for s in ("train", "val")) == 5 * 23
    assert meta["bad_records"] == 0
    parquet_text_bytes = sum(len(d.encode()) for d in docs["a.parquet"])
    assert meta["num_input_bytes"] > parquet_text_bytes  # text bytes, not compressed file sizes


def test_text_field_names_the_parquet_column_and_the_jsonl_field(tmp_path, tok):
    docs = nasty_docs(random.Random(1), 12)
    write_parquet(tmp_path / "a.parquet", docs, field="content")
    (tmp_path / "b.jsonl").write_bytes(jsonl_bytes(docs, field="content"))
    inputs = [tmp_path / "a.parquet", tmp_path / "b.jsonl"]
    meta = prepare_corpus(inputs, tok, tmp_path / "out", workers=1, val_fraction=0.0, text_field="content",
                          progress=False)
    assert read_stream(tmp_path / "out", "train") == expected_ids(tok, {"a": docs, "b": docs}, 0.0)["train"]
    assert meta["options"]["text_field"] == "content"
    with pytest.raises(DataError, match=r"a\.parquet: no column 'text' \(columns: id, content\)"):
        prepare_corpus(inputs, tok, tmp_path / "o2", workers=1, progress=False)
    with pytest.raises(DataError, match=r'b\.jsonl:1: expected a JSON object with a "text" field'):
        prepare_corpus(inputs[1:], tok, tmp_path / "o2", workers=1, progress=False)


def test_default_options_keep_the_content_fingerprint_of_older_preparations(tmp_path, tok):
    (tmp_path / "a.txt").write_text("the cat\n" * 50, encoding="utf-8")
    meta = prepare_corpus([tmp_path / "a.txt"], tok, tmp_path / "out", workers=1, progress=False)
    assert set(meta["options"]) == {"separator", "val_fraction", "replace_invalid_utf8", "dtype"}


def bad_inputs(tmp_path) -> dict[str, tuple[str, int]]:
    """One broken file per format: {file name: (the error it must give, bad records it holds)}."""
    docs = ["good one", "good two", "good three"]
    write_parquet(tmp_path / "nulls.parquet", [docs[0], None, docs[1], None, docs[2]], row_group_size=2)
    (tmp_path / "ints.jsonl.zst").write_bytes(zstd_bytes(
        b'{"text": "fine"}\n{"text": 5}\n{not json\n{"text": "also fine"}\n'))
    (tmp_path / "dolma.json.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n{"id": 3}\n'))
    return {"nulls.parquet": (r"nulls\.parquet: row 1 \(counting from 0\): column 'text' is null, expected "
                              r"a string; or skip such records with --skip-bad-records", 2),
            "ints.jsonl.zst": (r'ints\.jsonl\.zst:2: "text" must be a string, got int', 2),
            "dolma.json.gz": (r'dolma\.json\.gz:2: expected a JSON object with a "text" field', 1)}


def test_bad_records_name_file_and_row_or_are_skipped_and_counted(tmp_path, tok, capsys):
    for i, (name, (message, num_bad)) in enumerate(bad_inputs(tmp_path).items()):
        with pytest.raises(DataError, match=message):
            prepare_corpus([tmp_path / name], tok, tmp_path / f"o{i}", workers=1, progress=False)
        meta = prepare_corpus([tmp_path / name], tok, tmp_path / f"s{i}", workers=1, val_fraction=0.0,
                              skip_bad_records=True, progress=False)
        assert meta["bad_records"] == num_bad and meta["options"]["skip_bad_records"] is True
        assert meta["splits"]["train"]["num_documents"] in (1, 2, 3)
        err = capsys.readouterr().err
        assert f"skipped {num_bad} bad records" in err and name in err


def test_truncated_and_corrupt_files_are_errors_naming_the_file(tmp_path, tok):
    docs = nasty_docs(random.Random(2), 40)
    full = zstd_bytes(jsonl_bytes(docs))
    (tmp_path / "cut.jsonl.zst").write_bytes(full[: len(full) // 2])
    (tmp_path / "junk.txt.zst").write_bytes(b"this is not zstd at all" * 10)
    write_parquet(tmp_path / "full.parquet", docs)
    raw = (tmp_path / "full.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(SEP.join(docs).encode())[:-30])
    (tmp_path / "num.parquet").write_bytes(b"")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "num.parquet")
    cases = {"cut.jsonl.zst": r"cut\.jsonl\.zst: truncated zstd file",
             "junk.txt.zst": r"junk\.txt\.zst: not a valid zstd file",
             "cut.parquet": r"cut\.parquet: not a readable Parquet file .*truncated or corrupt",
             "cut.txt.gz": r"cut\.txt\.gz: cannot read input",
             "num.parquet": r"num\.parquet: column 'text' holds int64, expected strings"}
    for i, (name, message) in enumerate(cases.items()):
        for skip in (False, True):  # a broken file is not a bad record: skipping does not hide it
            out = tmp_path / f"o{i}{skip}"
            with pytest.raises(DataError, match=message):
                prepare_corpus([tmp_path / name], tok, out, workers=1, skip_bad_records=skip, progress=False)
            assert not (out / "meta.json").exists() and not list(out.glob("*.bin"))


def test_a_missing_extra_names_the_file_the_format_and_the_pip_command(tmp_path, tok, monkeypatch):
    write_parquet(tmp_path / "a.parquet", ["doc"])
    (tmp_path / "b.txt.zst").write_bytes(zstd_bytes(b"doc"))
    (tmp_path / "c.txt").write_text("doc", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(DataError, match=r"a\.parquet: reading Parquet input needs the pyarrow package.*"
                                         r"pip install 'dist_llm\[parquet\]'"):
        prepare_corpus([tmp_path / "c.txt", tmp_path / "a.parquet"], tok, tmp_path / "o", progress=False)
    with pytest.raises(DataError, match=r"b\.txt\.zst: reading zstd-compressed input needs the zstandard "
                                         r"package.*pip install 'dist_llm\[zstd\]'"):
        prepare_corpus([tmp_path / "b.txt.zst"], tok, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()  # refused before any work


def test_parquet_is_read_one_row_group_at_a_time(tmp_path, tok, monkeypatch):
    docs = nasty_docs(random.Random(4), 60)
    write_parquet(tmp_path / "a.parquet", docs, row_group_size=10)
    groups = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        groups.append(row_groups)
        return real(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    prepare_corpus([tmp_path / "a.parquet"], tok, tmp_path / "o", workers=1, progress=False)
    assert groups == [[g] for g in range(6)]


def test_cli_in_a_fresh_process_reads_parquet_and_zstd(tmp_path, tok):
    """A new interpreter has imported neither pyarrow.parquet nor zstandard: prepare must do it."""
    import subprocess

    docs = nasty_docs(random.Random(6), 9)
    write_parquet(tmp_path / "a.parquet", docs)
    (tmp_path / "b.jsonl.zst").write_bytes(zstd_bytes(jsonl_bytes(docs)))
    tok.save(tmp_path / "tok")
    args = ["--input", str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl.zst"), "--tokenizer",
            str(tmp_path / "tok"), "--out", str(tmp_path / "out"), "--workers", "1", "--val-fraction", "0",
            "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "dist_llm.data.prepare", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_stream(tmp_path / "out", "train") == expected_ids(tok, {"a": docs, "b": docs}, 0.0)["train"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "gzip"])
def test_tokenizer_of_a_run_learns_from_the_text_not_the_file_bytes(tmp_path, kind):
    """With no tokenizer.path the run trains BPE on its inputs: on the decoded documents, never on JSON
    syntax, Parquet pages or compressed bytes."""
    import gzip
    import json

    from dist_llm.config import parse_args
    from dist_llm.tokenizer import Tokenizer
    from dist_llm.training.pipeline import build_tokenizer

    docs = [f"the quick brown fox {i % 7} jumps over the lazy dog" for i in range(300)]
    if kind == "jsonl":
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    elif kind == "gzip":
        path = tmp_path / "docs.txt.gz"
        path.write_bytes(gzip.compress("\n<|endoftext|>\n".join(docs).encode()))
    else:
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"text": docs}), path)
    cfg = parse_args([f"--data.inputs={path}", "--model.vocab_size=300", f"--run.cache_dir={tmp_path / 'c'}",
                      "--tokenizer.num_workers=1"])
    tok = Tokenizer.load(build_tokenizer(cfg, [path]))
    learned = [left + right for left, right in tok.merges]
    assert b" the" in learned or b"the" in learned  # the text's words...
    assert not any(set(token) & set(b'{}":') for token in learned)  # ...and no JSON syntax
    assert not any(token.startswith(b"PAR1") for token in learned)


def test_data_inputs_takes_directories_and_globs_like_sources(tmp_path):
    from dist_llm.config import ConfigError, parse_args
    from dist_llm.training.pipeline import corpus_files

    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    for name in ("b.txt", "a.txt", "sub/c.jsonl"):
        (tmp_path / "corpus" / name).write_text('{"text": "x"}\n' if name.endswith("jsonl") else "x\n")
    as_dir = parse_args([f"--data.inputs={tmp_path / 'corpus'}"])
    assert [p.name for p in corpus_files(as_dir)] == ["a.txt", "b.txt", "c.jsonl"]
    as_glob = parse_args([f"--data.inputs={tmp_path / 'corpus'}/*.txt"])
    assert [p.name for p in corpus_files(as_glob)] == ["a.txt", "b.txt"]
    with pytest.raises(ConfigError, match=r"'data.inputs': .*missing.txt does not exist"):
        corpus_files(parse_args([f"--data.inputs={tmp_path / 'missing.txt'}"]))


def test_tokenizer_sample_stops_on_a_bad_record_unless_skipping(tmp_path):
    import json

    from dist_llm.config import parse_args
    from dist_llm.data import DataError
    from dist_llm.training.pipeline import build_tokenizer

    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"some words here {i}"}) for i in range(50)]
    path.write_text("\n".join(lines[:10] + ['{"text": 3}'] + lines[10:]) + "\n")
    args = [f"--data.inputs={path}", "--model.vocab_size=270", "--tokenizer.num_workers=1"]
    with pytest.raises(DataError, match=r"docs.jsonl:11"):
        build_tokenizer(parse_args([*args, f"--run.cache_dir={tmp_path / 'c1'}"]), [path])
    assert build_tokenizer(parse_args([*args, f"--run.cache_dir={tmp_path / 'c2'}",
                                       "--data.skip_bad_records=true"]), [path]).is_dir()
