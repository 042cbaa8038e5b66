"""MemmapTokens windows and validation, ShardedBatchLoader batches, get_batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dist_llm.data import DataError, MemmapTokens, ShardedBatchLoader, get_batch
from dist_llm.data.meta import FORMAT_VERSION, write_meta

FINGERPRINT = "ab" * 32


def write_token_dir(path, train: np.ndarray, val: np.ndarray | None = None, dtype: str = "uint16"):
    """A prepared data directory holding the given tokens, in the format prepare.py writes."""
    path.mkdir(parents=True, exist_ok=True)
    val = np.zeros(0, dtype=dtype) if val is None else val
    splits = {}
    for name, arr in (("train", train), ("val", val)):
        np.asarray(arr, dtype=dtype).tofile(path / f"{name}.bin")
        splits[name] = {"file": f"{name}.bin", "num_tokens": len(arr), "num_documents": 1}
    write_meta(path, {"format_version": FORMAT_VERSION, "dtype": dtype, "splits": splits,
                      "tokenizer_fingerprint": FINGERPRINT, "vocab_size": 1000})
    return path


@pytest.fixture
def data_dir(tmp_path):
    return write_token_dir(tmp_path / "data", np.arange(1001) % 1000, np.arange(50))


def test_windows_tile_the_file_with_shifted_targets(data_dir):
    ds = MemmapTokens(data_dir, "train", context_length=8, expected_tokenizer_fingerprint=FINGERPRINT)
    assert ds.num_tokens == 1001
    assert len(ds) == 1000 // 8
    for i in (0, 1, len(ds) - 1):
        x, y = ds.window(i)
        assert x.dtype == np.int64 and y.dtype == np.int64
        np.testing.assert_array_equal(x, (np.arange(i * 8, i * 8 + 8)) % 1000)
        np.testing.assert_array_equal(y, (np.arange(i * 8 + 1, i * 8 + 9)) % 1000)
    batch = ds.windows(np.array([3, 0, 3]))
    assert batch.shape == (3, 9)
    np.testing.assert_array_equal(batch[0], batch[2])
    with pytest.raises(IndexError):
        ds.windows(np.array([len(ds)]))


def test_uint32_files_are_read_with_their_dtype(tmp_path):
    tokens = np.array([70000, 1, 65536, 5, 99999], dtype=np.uint32)
    d = write_token_dir(tmp_path / "d", tokens, dtype="uint32")
    x, y = MemmapTokens(d, "train", context_length=4).window(0)
    assert x.tolist() == [70000, 1, 65536, 5] and y.tolist() == [1, 65536, 5, 99999]


def test_size_mismatch_names_the_file(data_dir):
    with open(data_dir / "train.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match=r"train\.bin has 2004 bytes.*2002 bytes"):
        MemmapTokens(data_dir, "train", context_length=8)


def test_missing_token_file_and_missing_meta(data_dir, tmp_path):
    (data_dir / "val.bin").unlink()
    with pytest.raises(DataError, match=r"val\.bin is missing"):
        MemmapTokens(data_dir, "val", context_length=8)
    with pytest.raises(DataError, match="meta.json not found.*dist_llm.data.prepare"):
        MemmapTokens(tmp_path / "nowhere", "train", context_length=8)


def test_tokenizer_fingerprint_mismatch_says_to_prepare_again(data_dir):
    expected = "prepared with tokenizer abababababab.*re-run python -m dist_llm.data.prepare"
    with pytest.raises(DataError, match=expected):
        MemmapTokens(data_dir, "train", context_length=8, expected_tokenizer_fingerprint="cd" * 32)


def test_split_shorter_than_one_window(data_dir):
    MemmapTokens(data_dir, "val", context_length=49)  # 50 tokens: exactly one window
    with pytest.raises(DataError, match="split 'val'.*50 tokens, fewer than one window.*51"):
        MemmapTokens(data_dir, "val", context_length=50)
    with pytest.raises(DataError, match="no split 'test'"):
        MemmapTokens(data_dir, "test", context_length=8)


def test_other_format_version_is_rejected(data_dir):
    meta = json.loads((data_dir / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (data_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format_version"):
        MemmapTokens(data_dir, "train", context_length=8)


def test_loader_batches_match_dataset_windows(data_dir):
    ds = MemmapTokens(data_dir, "train", context_length=8)
    loader = ShardedBatchLoader(ds, micro_batch_size=4, rank=1, world_size=2, seed=3)
    state = loader.state_dict()
    x, y = loader.next_batch()
    assert x.shape == (4, 8) and y.shape == (4, 8)
    assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
    loader.load_state_dict(state)
    expected = ds.windows(loader.next_indices())
    np.testing.assert_array_equal(x.numpy(), expected[:, :-1])
    np.testing.assert_array_equal(y.numpy(), expected[:, 1:])
    assert json.loads(json.dumps(loader.state_dict())) == loader.state_dict()


def test_loader_rejects_bad_rank(data_dir):
    ds = MemmapTokens(data_dir, "train", context_length=8)
    with pytest.raises(ValueError, match="rank must be in"):
        ShardedBatchLoader(ds, micro_batch_size=2, rank=2, world_size=2)


def test_get_batch_windows_come_from_the_array():
    tokens = np.arange(500, dtype=np.uint16)
    x, y = get_batch(tokens, batch_size=16, context_length=10, device="cpu", rng=np.random.default_rng(0))
    assert x.shape == (16, 10) and x.dtype == torch.int64
    # consecutive values: every row is a contiguous slice and y is x shifted by one
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(16, 9, dtype=torch.int64))
    assert torch.equal(y, x + 1)
    assert int(y.max()) <= 499
    x2, _ = get_batch(torch.arange(500), batch_size=16, context_length=10, rng=np.random.default_rng(0))
    assert torch.equal(x, x2)


def test_get_batch_raises_for_missing_devices_and_short_input():
    tokens = np.arange(100)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_batch(tokens, 2, 8, "cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS is not available"):
            get_batch(tokens, 2, 8, "mps")
    with pytest.raises(ValueError, match="invalid device"):
        get_batch(tokens, 2, 8, "gpu0")
    with pytest.raises(ValueError, match="fewer than context_length"):
        get_batch(tokens, 2, 100, "cpu")
