"""Checkpoint format: round trips, wrapper prefixes, atomicity under a crash, retention, verification."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch
from trainer_runs import flip_tensor_byte

from dist_llm import checkpoint as ckpt
from dist_llm.checkpoint import CheckpointError


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)))


class Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: it holds the model as `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def _train_steps(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 4, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))


@pytest.mark.parametrize("form", ["directory", "suffix_file", "file_object"])
def test_public_api_round_trip_continues_training_identically(tmp_path, form):
    model, opt = _fresh()
    _train_steps(model, opt, 3)
    target = {"directory": tmp_path / "ckpt", "suffix_file": tmp_path / "ckpt.safetensors",
              "file_object": io.BytesIO()}[form]
    ckpt.save_checkpoint(target, model, opt, iteration=3)
    if form == "file_object":
        target.seek(0)

    restored, restored_opt = _fresh(seed=1)  # different init: everything must come from the checkpoint
    assert ckpt.load_checkpoint(target, restored, restored_opt) == 3
    assert restored_opt.param_groups[0]["betas"] == (0.8, 0.9)
    _train_steps(model, opt, 2, seed=5)
    _train_steps(restored, restored_opt, 2, seed=5)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's imports
def test_wrapper_prefixes_are_stripped(tmp_path):
    model, opt = _fresh()
    plain = set(model.state_dict())
    for wrapped in (Wrapper(model), torch.compile(model), Wrapper(torch.compile(model))):
        assert set(ckpt.model_state_for_saving(wrapped)) == plain
        assert ckpt.unwrap_model(wrapped) is model
    ckpt.save_checkpoint(tmp_path / "c", Wrapper(model), opt, 1)
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "c" / ckpt.MODEL_FILE)) == plain
    fresh, _ = _fresh(seed=3)
    ckpt.load_checkpoint(tmp_path / "c", Wrapper(fresh), None)  # loading into a wrapped model works too
    assert torch.equal(fresh.inp.weight, model.inp.weight)


def _write(root, step, keep_last=None, value=0.0):
    return ckpt.write_checkpoint(root, step, model_state={"w": torch.full((3,), value)},
                                 optimizer_state=None, trainer_state={"step": step}, config={"model": {}},
                                 keep_last=keep_last)


def test_directory_layout_and_retention(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step, keep_last=2)
    assert [p.name for p in ckpt.list_complete(tmp_path)] == ["step_00000020", "step_00000030"]
    latest = ckpt.find_latest_checkpoint(tmp_path)
    assert latest.name == "step_00000030"
    assert sorted(p.name for p in latest.iterdir()) == ["COMPLETE", "config.json", "model.safetensors",
                                                       "trainer_state.json"]
    assert json.loads((latest / "COMPLETE").read_text())["step"] == 30
    _write(tmp_path, 30, keep_last=2, value=7.0)  # rewriting the same step replaces it
    assert ckpt.read_checkpoint(latest).model_state["w"][0].item() == 7.0
    _write(tmp_path, 40, keep_last=1)
    assert [p.name for p in ckpt.list_complete(tmp_path)] == ["step_00000040"]
    ckpt.prune_checkpoints(tmp_path, keep_last=0)  # never deletes the only complete checkpoint
    assert ckpt.find_latest_checkpoint(tmp_path) is not None


CRASHING_WRITER = """
import sys, torch
from dist_llm.checkpoint import write_checkpoint
write_checkpoint(sys.argv[1], int(sys.argv[2]), model_state={"w": torch.ones(3)}, optimizer_state=None,
                 trainer_state={}, config={}, keep_last=5)
"""


def test_crash_mid_write_leaves_previous_checkpoint_latest(tmp_path):
    _write(tmp_path, 10)
    env = {**os.environ, ckpt.CRASH_ENV: "20"}
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(tmp_path), "20"], env=env, timeout=120)
    assert proc.returncode == 43  # it really died mid-write
    assert not (tmp_path / "step_00000020").exists()
    assert list(tmp_path.glob(".tmp_step_00000020_*"))  # the half-written temp dir is left behind...
    assert ckpt.find_latest_checkpoint(tmp_path).name == "step_00000010"
    _write(tmp_path, 30, keep_last=5)  # ...and cleaned up by the next successful write
    assert not list(tmp_path.glob(".tmp_*"))


def test_verification_names_the_broken_file(tmp_path):
    model, opt = _fresh()
    _train_steps(model, opt, 1)
    path = tmp_path / "c"
    ckpt.save_checkpoint(path, model, opt, 1)
    ckpt.verify_checkpoint(path)

    weights = path / ckpt.MODEL_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 16])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ckpt.load_checkpoint(path, model, opt)
    weights.write_bytes(data)

    (path / ckpt.OPTIMIZER_JSON).unlink()
    with pytest.raises(CheckpointError, match="optimizer.json: missing"):
        ckpt.verify_checkpoint(path)

    (path / ckpt.OPTIMIZER_JSON).write_text("{not json")
    (path / ckpt.COMPLETE).write_text(json.dumps({"files": {ckpt.OPTIMIZER_JSON: 9}}))
    with pytest.raises(CheckpointError, match="optimizer.json: not valid JSON"):
        ckpt.verify_checkpoint(path)

    (path / ckpt.COMPLETE).unlink()
    with pytest.raises(CheckpointError, match="never finished"):
        ckpt.verify_checkpoint(path)


def _saved_after_one_step(path):
    """(model, optimizer, manifest) of a checkpoint written at `path` after one training step."""
    model, opt = _fresh()
    _train_steps(model, opt, 1)
    ckpt.save_checkpoint(path, model, opt, 1)
    return model, opt, json.loads((path / ckpt.COMPLETE).read_text())


def test_flipped_byte_in_tensor_data_fails_the_checksum(tmp_path):
    path = tmp_path / "c"
    model, opt, manifest = _saved_after_one_step(path)
    assert set(manifest["sha256"]) == set(manifest["files"])  # every file has its checksum
    for name in (ckpt.MODEL_FILE, ckpt.OPTIMIZER_TENSORS):
        good = (path / name).read_bytes()
        flip_tensor_byte(path / name)  # same size, header intact: only the content differs
        with pytest.raises(CheckpointError, match=f"{name}: sha256 checksum does not match"):
            ckpt.verify_checkpoint(path)
        with pytest.raises(CheckpointError, match=f"{name}: sha256 checksum does not match"):
            ckpt.load_checkpoint(path, model, opt)
        ckpt.verify_checkpoint(path, checksums=False)  # the cheap structural checks cannot tell
        (path / name).write_bytes(good)
    ckpt.verify_checkpoint(path)


def test_manifest_without_checksums_still_loads(tmp_path):
    """Checkpoints written before the manifest had checksums: sizes and structure are checked."""
    path = tmp_path / "c"
    model, _, manifest = _saved_after_one_step(path)
    old = {"step": manifest["step"], "files": manifest["files"]}
    (path / ckpt.COMPLETE).write_text(json.dumps(old))
    restored, restored_opt = _fresh(seed=1)
    assert ckpt.load_checkpoint(path, restored, restored_opt) == 1
    assert torch.equal(restored.inp.weight, model.inp.weight)
    weights = path / ckpt.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated"):
        ckpt.verify_checkpoint(path)


def test_missing_checkpoint_path_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="nope: does not exist"):
        ckpt.verify_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="file: not a checkpoint directory"):
        ckpt.verify_checkpoint(tmp_path / "file")


def test_weights_of_another_model_are_rejected_with_names(tmp_path):
    model, opt = _fresh()
    ckpt.save_checkpoint(tmp_path / "c.safetensors", model, opt, 1)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(CheckpointError, match="missing .*0.weight"):
        ckpt.load_checkpoint(tmp_path / "c.safetensors", other, None)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(io.BytesIO(b"garbage!garbage!"), model, None)


def test_model_config_mismatch_names_keys():
    ckpt.check_model_config({"d_model": 64, "num_layers": 2}, {"d_model": 64, "num_layers": 2}, "x")
    with pytest.raises(CheckpointError, match=r"d_model: checkpoint 64 vs run 128.*num_heads"):
        ckpt.check_model_config({"d_model": 64, "num_heads": 4}, {"d_model": 128, "num_heads": 8}, "ckpt")


def test_model_config_check_ignores_implementation_keys_and_fills_absent_defaults():
    from dist_llm.model import ModelConfig

    run = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48)
    run = run.to_dict()
    older = {k: v for k, v in run.items() if k not in ("fused_ops", "norm_eps")}  # saved before those keys
    ckpt.check_model_config(older, run, "old_ckpt")
    other_kernels = {**run, "attn_impl": "reference", "fused_ops": False}  # same weights, other code path
    ckpt.check_model_config(other_kernels, run, "ckpt")
    with pytest.raises(CheckpointError, match=r"norm_eps: checkpoint 1e-06 vs run 1e-05"):
        ckpt.check_model_config({**older, "norm_eps": 1e-6}, run, "ckpt")
    with pytest.raises(CheckpointError, match=r"vocab_size: checkpoint '<absent>' vs run 64"):
        ckpt.check_model_config({k: v for k, v in run.items() if k != "vocab_size"}, run, "ckpt")


def test_optimizer_state_split_join_is_lossless():
    model, opt = _fresh()
    _train_steps(model, opt, 2)
    state = opt.state_dict()
    tensors, meta = ckpt.split_optimizer_state(state)
    json.dumps(meta)  # the non-tensor part really is JSON
    joined = ckpt.join_optimizer_state(tensors, json.loads(json.dumps(meta)), opt)
    assert joined["param_groups"] == state["param_groups"]
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            assert torch.equal(joined["state"][index][name], value)


def test_rng_state_round_trips_through_json():
    import random

    import numpy as np

    from dist_llm.utils.rng import capture_rng_state, restore_rng_state

    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    state = json.loads(json.dumps(capture_rng_state()))  # really plain JSON
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    restore_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
