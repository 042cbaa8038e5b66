"""Benchmark scripts run end to end on a CPU (smoke tests: no timing is checked).

gpu_check.sh calls bench_model.py's flags on a GPU, where a broken runner would cost a scarce GPU session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ONE_ROUND = ("--rounds", "1", "--steps", "1")  # one timed round of one call: the script runs, fast


def run_bench(script: str, *args: str, cwd: Path) -> str:
    """Run bench/<script> with args from another directory; its stdout (fails on a non-zero exit)."""
    cmd = [sys.executable, str(ROOT / "bench" / script), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_runner_takes_a_step_and_reports_its_ratio(tmp_path):
    flags = ["--with-tied", "--with-torch-loss", "--with-logits-loss", "--with-other-path",
             "--with-unpadded-head", "--with-doc-masking"]  # fmt: skip
    out = run_bench("bench_model.py", "--device", "cpu", "--config", "tiny", "--batch-size", "2",
                    *ONE_ROUND, "--warmup", "1", "--threads", "1", *flags, cwd=tmp_path)  # fmt: skip
    assert "tiny: tokens/s ours / nanoGPT (faithful baseline) = " in out
    for label in ("head tied", "F.cross_entropy", "fused_cross_entropy", "fused_ops=False",
                  "head not padded", "doc masking"):  # fmt: skip
        assert f"tiny: (dist_llm, {label} (info)) / baseline = " in out, f"no ratio for {label!r}:\n{out}"
    assert "tokens/s with doc masking / without = " in out


def test_attention_bench_prints_a_row_per_shape_and_dtype_with_the_models_choice(tmp_path):
    out = run_bench("bench_attention.py", "--shapes", "2,2,16,8", "1,2,1024,8", *ONE_ROUND, cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith(("| 2,2,16,8 |", "| 1,2,1024,8 |"))]
    assert len(rows) == 4, out
    # the last column is the model's routing rule: the short bf16 shape only
    choices = {tuple(c.strip() for c in row.split("|")[1:3]): row.split("|")[-2].strip() for row in rows}
    assert choices == {("2,2,16,8", "bf16"): "True", ("1,2,1024,8", "bf16"): "False",
                       ("2,2,16,8", "fp32"): "False", ("1,2,1024,8", "fp32"): "False"}, choices


@pytest.mark.parametrize("model", ["ours", "nanogpt"])
def test_profile_step_prints_phases_and_op_count(tmp_path, model):
    out = run_bench("profile_step.py", "--config", "tiny", "--device", "cpu", "--batch-size", "1", *ONE_ROUND,
                    "--warmup", "1", "--threads", "1", "--model", model, cwd=tmp_path)  # fmt: skip
    phases = next(line for line in out.splitlines() if line.startswith("phases"))
    for phase in ("forward + loss", "backward", "optimizer"):
        assert phase in phases, phases
    ops = next(line for line in out.splitlines() if line.startswith("aten ops per step: "))
    assert int(ops.split(": ")[1].replace(",", "")) > 100, ops


def test_norm_bench_prints_a_row_per_shape_with_every_contender(tmp_path):
    out = run_bench("bench_norm.py", "--shapes", "8,16", "4,32", *ONE_ROUND, cwd=tmp_path)
    header = next(line for line in out.splitlines() if line.startswith("| rows,d_model"))
    assert [c.strip() for c in header.split("|")[2:-1]] == ["model", "rms_norm", "formula", "LayerNorm"]
    rows = [line for line in out.splitlines() if line.startswith(("| 8,16 |", "| 4,32 |"))]
    assert len(rows) == 2, out
    assert all(float(cell.split("(")[0]) > 0 for row in rows for cell in row.split("|")[2:-1]), rows
