"""Sharded token files read as one stream; --part I/N + merge equals a one-machine prepare."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
from test_data_prepare import SEP, expected_ids, make_tokenizer, nasty_docs, write_txt

from dist_llm.data import DataError, MemmapTokens, prepare_corpus
from dist_llm.data.meta import read_meta, split_files, write_meta
from dist_llm.data.parts import merge_parts, parse_part, part_files
from dist_llm.data.prepare import is_validation_doc, main


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def read_stream(out_dir, split: str) -> list[int]:
    """A split's whole token stream, over all its files."""
    meta = read_meta(out_dir)
    return [t for name, _ in split_files(meta, split)
            for t in np.fromfile(out_dir / name, dtype=meta["dtype"]).tolist()]


@pytest.fixture
def corpus(tmp_path):
    """Seven files of unequal sizes and kinds: {name: documents}."""
    rng = random.Random(11)
    docs = {}
    for i in range(7):
        name = f"f{i}.jsonl" if i % 3 == 0 else f"f{i}.txt"
        docs[name] = nasty_docs(rng, rng.randint(3, 25))
        if name.endswith(".txt"):
            write_txt(tmp_path / name, docs[name], "newlines")
        else:
            (tmp_path / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[name]),
                                         encoding="utf-8")
    return docs


def test_shards_hold_at_most_shard_size_tokens_and_load_as_one_stream(tmp_path, tok, corpus):
    inputs = [tmp_path / n for n in corpus]
    whole = prepare_corpus(inputs, tok, tmp_path / "whole", workers=1, val_fraction=0.2, progress=False)
    sharded = prepare_corpus(inputs, tok, tmp_path / "sharded", workers=2, val_fraction=0.2, shard_size=100,
                             chunk_size=300, progress=False)
    want = expected_ids(tok, corpus, 0.2)
    for split in ("train", "val"):
        files = sharded["splits"][split]["files"]
        assert len(files) == math.ceil(len(want[split]) / 100) > 2
        assert [f["num_tokens"] for f in files[:-1]] == [100] * (len(files) - 1)
        assert files[0]["file"] == f"{split}.bin" and files[1]["file"] == f"{split}.00001.bin"
        assert read_stream(tmp_path / "sharded", split) == want[split]
        assert len(whole["splits"][split]["files"]) == 1
    for split, ctx in (("train", 7), ("val", 16), ("train", 100), ("train", 333)):
        a = MemmapTokens(tmp_path / "whole", split, ctx, tok.fingerprint)
        b = MemmapTokens(tmp_path / "sharded", split, ctx, tok.fingerprint)
        assert len(a) == len(b) and a.content_fingerprint == b.content_fingerprint
        every = np.arange(len(a))  # windows crossing file boundaries included
        np.testing.assert_array_equal(a.windows(every), b.windows(every))
        np.testing.assert_array_equal(b.windows(every[::-1]), a.windows(every[::-1]))
    assert len(a.tokens) == a.num_tokens
    with pytest.raises(DataError, match=r"stored in \d+ token files.*windows\(indices\)"):
        b.tokens  # noqa: B018


@pytest.mark.parametrize("hashed_into", ["train", "val"])
def test_one_document_tail_rule_works_across_shards(tmp_path, tok, hashed_into):
    name = next(f"doc{i}.txt" for i in range(100)
                if is_validation_doc(f"doc{i}.txt", 0, 0.3) == (hashed_into == "val"))
    doc = " ".join(nasty_docs(random.Random(3), 30))
    (tmp_path / name).write_text(doc, encoding="utf-8")
    stream = tok.encode(doc) + [tok.token_id(SEP)]
    meta = prepare_corpus([tmp_path / name], tok, tmp_path / "out", workers=1, val_fraction=0.3,
                          shard_size=64, progress=False)
    cut = len(stream) - math.ceil(len(stream) * 0.3)
    assert read_stream(tmp_path / "out", "train") == stream[:cut]
    assert read_stream(tmp_path / "out", "val") == stream[cut:]
    assert meta["val_split"] == "last tokens" and len(meta["splits"]["val"]["files"]) > 1
    on_disk = sorted(p.name for p in (tmp_path / "out").iterdir())
    listed = sorted(f["file"] for s in ("train", "val") for f in meta["splits"][s]["files"])
    assert on_disk == sorted(listed + ["meta.json"])  # no stray temporary or stale shard files


def test_windows_cross_uneven_and_empty_files(tmp_path):
    """Files shorter than a window, and an empty one: windows read straight through them."""
    out = tmp_path / "d"
    out.mkdir()
    stream = np.arange(1000, 1100, dtype=np.uint16)
    cuts = [0, 3, 3, 40, 41, 100]  # file 1 is empty, file 3 holds one token
    files = []
    for k in range(len(cuts) - 1):
        stream[cuts[k]:cuts[k + 1]].tofile(out / f"t{k}.bin")
        files.append({"file": f"t{k}.bin", "num_tokens": cuts[k + 1] - cuts[k]})
    write_meta(out, {"format_version": 2, "dtype": "uint16", "tokenizer_fingerprint": "ab" * 32,
                     "vocab_size": 2000, "splits": {"train": {"files": files, "num_tokens": 100}}})
    ds = MemmapTokens(out, "train", 8)
    assert len(ds) == 99 // 8
    idx = np.array([0, 4, 11, 5, 0])
    want = np.stack([stream[i * 8:i * 8 + 9] for i in idx]).astype(np.int64)
    np.testing.assert_array_equal(ds.windows(idx), want)
    (out / "t3.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"t3\.bin has 0 bytes, but meta\.json says 1 uint16 tokens"):
        MemmapTokens(out, "train", 8)


def test_format_1_single_file_data_still_loads_with_its_fingerprint(tmp_path):
    out = tmp_path / "v1"
    out.mkdir()
    np.arange(300, dtype=np.uint16).tofile(out / "train.bin")
    np.arange(50, dtype=np.uint16).tofile(out / "val.bin")
    meta = {"format_version": 1, "dtype": "uint16", "tokenizer_fingerprint": "ab" * 32, "vocab_size": 512,
            "splits": {s: {"file": f"{s}.bin", "num_tokens": n, "num_documents": 1}
                       for s, n in (("train", 300), ("val", 50))},
            "options": {"val_fraction": 0.01}, "inputs": [{"sha256": "00" * 32}]}
    write_meta(out, meta)
    ds = MemmapTokens(out, "train", 8)
    assert ds.windows(np.array([2]))[0].tolist() == list(range(16, 25))
    # The fingerprint a format-1 run recorded in its checkpoints (format 1 hashed format_version = 1).
    import hashlib
    identity = {"inputs": ["00" * 32], "options": {"val_fraction": 0.01}, "tokenizer": "ab" * 32,
                "format": 1, "split": "train"}
    assert ds.content_fingerprint == hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def test_parts_are_contiguous_disjoint_and_cover_every_file(tmp_path):
    files = []
    for i, size in enumerate([5, 1000, 3, 3, 400, 1, 1, 700, 20]):
        (tmp_path / f"{i}.txt").write_bytes(b"x" * size)
        files.append(tmp_path / f"{i}.txt")
    for count in (1, 2, 3, 4, 9, 12):
        parts = [part_files(files, i, count) for i in range(count)]
        assert [f for p in parts for f in p] == files
    assert parse_part("3/8") == (3, 8)
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(DataError, match="--part"):
            parse_part(bad)


@pytest.mark.parametrize("count", [1, 3, 10])
def test_parts_then_merge_equal_one_prepare(tmp_path, tok, corpus, count):
    inputs = [tmp_path / n for n in corpus]
    single = prepare_corpus(inputs, tok, tmp_path / "single", workers=1, val_fraction=0.2, progress=False)
    dirs = [tmp_path / "parts" / f"part-{i}" for i in range(count)]
    for i in reversed(range(count)):  # order of the runs does not matter
        prepare_corpus(inputs, tok, dirs[i], workers=1, val_fraction=0.2, part=(i, count), shard_size=150,
                       progress=False)
    with pytest.raises(DataError, match="one part of a multi-machine preparation"):
        MemmapTokens(dirs[0], "train", 8)
    merged = merge_parts(list(reversed(dirs)))  # written to their common parent
    out = tmp_path / "parts"
    for split in ("train", "val"):
        assert read_stream(out, split) == read_stream(tmp_path / "single", split)
        a = MemmapTokens(tmp_path / "single", split, 16, tok.fingerprint)
        b = MemmapTokens(out, split, 16, tok.fingerprint)
        assert a.content_fingerprint == b.content_fingerprint
        every = np.arange(len(a))
        np.testing.assert_array_equal(a.windows(every), b.windows(every))
    for key in ("splits", "build"):
        single.pop(key), merged.pop(key)
    assert merged == single


def test_merge_refuses_parts_that_do_not_belong_together(tmp_path, tok, corpus):
    inputs = [tmp_path / n for n in corpus]
    d = tmp_path / "p"
    for i in range(3):
        prepare_corpus(inputs, tok, d / str(i), workers=1, val_fraction=0.2, part=(i, 3), progress=False)
    with pytest.raises(DataError, match=r"expected parts 0\.\.2 once each; missing \[1\], given twice \[0\]"):
        merge_parts([d / "0", d / "0", d / "2"])
    with pytest.raises(DataError, match="missing \\[2\\]"):
        merge_parts([d / "0", d / "1"])
    other = make_tokenizer(extra_merges=1)
    prepare_corpus(inputs, other, d / "x1", workers=1, val_fraction=0.2, part=(1, 3), progress=False)
    with pytest.raises(DataError, match=r"x1 has tokenizer_fingerprint = .* same tokenizer and options"):
        merge_parts([d / "0", d / "x1", d / "2"])
    prepare_corpus(inputs, tok, d / "v1", workers=1, val_fraction=0.3, part=(1, 3), progress=False)
    with pytest.raises(DataError, match=r"v1 has options = "):
        merge_parts([d / "0", d / "v1", d / "2"])
    prepare_corpus(inputs[:-1], tok, d / "i1", workers=1, val_fraction=0.2, part=(1, 3), progress=False)
    with pytest.raises(DataError, match=r"i1 has part\.inputs_digest"):
        merge_parts([d / "0", d / "i1", d / "2"])
    (d / "2" / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match=r"2/train\.bin has 2 bytes.*re-run that part"):
        merge_parts([d / "0", d / "1", d / "2"])
    assert not (d / "meta.json").exists()


def test_merge_refuses_a_corpus_whose_documents_leave_a_split_empty(tmp_path, tok):
    (tmp_path / "a.txt").write_text("the cat " * 100, encoding="utf-8")  # one document: no val docs
    (tmp_path / "b.txt").write_text("the hat " * 100, encoding="utf-8")
    names = ["a.txt", "b.txt"]
    assert not any(is_validation_doc(n, 0, 0.01) for n in names)  # both documents go to train
    for i in range(2):
        prepare_corpus([tmp_path / n for n in names], tok, tmp_path / "p" / str(i), workers=1,
                       val_fraction=0.01, part=(i, 2), progress=False)
    with pytest.raises(DataError, match="split empty.*prepared on one machine"):
        merge_parts([tmp_path / "p" / "0", tmp_path / "p" / "1"])


def test_cli_part_and_merge(tmp_path, tok, corpus):
    tok.save(tmp_path / "tok")
    common = ["--input", *(str(tmp_path / n) for n in corpus), "--tokenizer", str(tmp_path / "tok"),
              "--workers", "1", "--no-progress", "--val-fraction", "0.2"]
    for i in range(2):
        assert main([*common, "--out", str(tmp_path / "parts" / f"p{i}"), "--part", f"{i}/2"]) == 0
    script = "import sys; from dist_llm.data.prepare import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", script, "merge", str(tmp_path / "parts" / "p0"),
                           str(tmp_path / "parts" / "p1"), "--out", str(tmp_path / "joined")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "merged 2 parts" in proc.stdout
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    assert read_stream(tmp_path / "joined", "train") == read_stream(tmp_path / "single", "train")
    assert main(["merge", str(tmp_path / "parts" / "p0")]) == 1
