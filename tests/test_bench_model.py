"""bench/bench_model.py runs end to end with every information-only runner (a smoke test, no timing).

gpu_check.sh calls these flags on a GPU, where a broken runner would cost a scarce GPU session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_model.py"


def test_every_runner_takes_a_step_and_reports_its_ratio(tmp_path):
    flags = ["--with-tied", "--with-torch-loss", "--with-logits-loss", "--with-other-path",
             "--with-unpadded-head", "--with-doc-masking"]  # fmt: skip
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--config", "tiny", "--batch-size", "2",
           "--steps", "1", "--rounds", "1", "--warmup", "1", "--threads", "1", *flags]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(BENCH.parents[1])}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tiny: tokens/s ours / nanoGPT (faithful baseline) = " in out
    for label in ("head tied", "F.cross_entropy", "fused_cross_entropy", "fused_ops=False",
                  "head not padded", "doc masking"):  # fmt: skip
        assert f"tiny: (dist_llm, {label} (info)) / baseline = " in out, f"no ratio for {label!r}:\n{out}"
    assert "tokens/s with doc masking / without = " in out
