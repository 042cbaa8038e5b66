"""Benchmark scripts run end to end on a CPU (smoke tests: no timing is checked).

gpu_check.sh calls bench_model.py's flags on a GPU, where a broken runner would cost a scarce GPU session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_model.py"


def test_every_runner_takes_a_step_and_reports_its_ratio(tmp_path):
    flags = ["--with-tied", "--with-torch-loss", "--with-logits-loss", "--with-other-path",
             "--with-unpadded-head", "--with-doc-masking"]  # fmt: skip
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--config", "tiny", "--batch-size", "2",
           "--steps", "1", "--rounds", "1", "--warmup", "1", "--threads", "1", *flags]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tiny: tokens/s ours / nanoGPT (faithful baseline) = " in out
    for label in ("head tied", "F.cross_entropy", "fused_cross_entropy", "fused_ops=False",
                  "head not padded", "doc masking"):  # fmt: skip
        assert f"tiny: (dist_llm, {label} (info)) / baseline = " in out, f"no ratio for {label!r}:\n{out}"
    assert "tokens/s with doc masking / without = " in out


def test_attention_bench_prints_a_row_per_shape_and_dtype_with_the_models_choice(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "bench_attention.py"), "--shapes", "2,2,16,8", "1,2,1024,8",
           "--rounds", "1", "--steps", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 2,2,16,8 |")
            or line.startswith("| 1,2,1024,8 |")]  # fmt: skip
    assert len(rows) == 4, done.stdout
    # the last column is the model's routing rule: the short bf16 shape only
    choices = {tuple(c.strip() for c in row.split("|")[1:3]): row.split("|")[-2].strip() for row in rows}
    assert choices == {("2,2,16,8", "bf16"): "True", ("1,2,1024,8", "bf16"): "False",
                       ("2,2,16,8", "fp32"): "False", ("1,2,1024,8", "fp32"): "False"}, choices


@pytest.mark.parametrize("model", ["ours", "nanogpt"])
def test_profile_step_prints_phases_and_op_count(tmp_path, model):
    cmd = [sys.executable, str(ROOT / "bench" / "profile_step.py"), "--config", "tiny", "--device", "cpu",
           "--batch-size", "1", "--steps", "1", "--rounds", "1", "--warmup", "1", "--threads", "1",
           "--model", model]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    phases = next(line for line in done.stdout.splitlines() if line.startswith("phases"))
    for phase in ("forward + loss", "backward", "optimizer"):
        assert phase in phases, phases
    ops = next(line for line in done.stdout.splitlines() if line.startswith("aten ops per step: "))
    assert int(ops.split(": ")[1].replace(",", "")) > 100, ops


def test_norm_bench_prints_a_row_per_shape_with_every_contender(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "bench_norm.py"), "--shapes", "8,16", "4,32",
           "--rounds", "1", "--steps", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    header = next(line for line in done.stdout.splitlines() if line.startswith("| rows,d_model"))
    assert [c.strip() for c in header.split("|")[2:-1]] == ["model", "rms_norm", "formula", "LayerNorm"]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 8,16 |", "| 4,32 |"))]
    assert len(rows) == 2, done.stdout
    assert all(float(cell.split("(")[0]) > 0 for row in rows for cell in row.split("|")[2:-1]), rows
