"""bench/gpu_check.sh keeps to its time budget: steps that would start too late are skipped, the check
fails as INCOMPLETE, and the summary still prints (a lent GPU with a hard limit must always report)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_gpu_check(tmp_path: Path, budget_s: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": str(budget_s),
           "LOG_DIR": str(tmp_path / "logs")}  # fmt: skip
    return subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_a_spent_budget_skips_every_step_and_reports_incomplete(tmp_path: Path) -> None:
    result = run_gpu_check(tmp_path, budget_s=0)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    summary = out[out.index("=== summary") :]
    step_rows = [line for line in summary.splitlines() if line.startswith("| ") and "| step |" not in line]
    assert step_rows, summary
    assert all("SKIPPED (time budget)" in row for row in step_rows), summary
    assert "GPU CHECK: INCOMPLETE, the 0 s budget ran out" in out
    assert "ALL STEPS OK" not in out
    assert not list((tmp_path / "logs").glob("*.log"))  # no step ran


def test_gpu_step_timeouts_fit_the_default_budget_with_room_reserved() -> None:
    # Each step is killed at its timeout, so if the GPU steps' timeouts add up to the default budget, all
    # of them run (none is skipped) in a default run.
    import re

    script = (REPO / "bench" / "gpu_check.sh").read_text()
    budget = int(re.search(r'BUDGET_S="\$\{GPU_CHECK_BUDGET_S:-(\d+)\}"', script).group(1))
    reserved = int(re.search(r"^RESERVED_S=(\d+)", script, re.M).group(1))
    assert reserved >= 60  # room for the FSDP steps
    gpu_branch = script[script.index('if [ "$HAS_GPU" != "1" ]'):]
    gpu_branch = gpu_branch[gpu_branch.index("\nelse\n") : gpu_branch.index("GPU_CHECK_EXTRA:-0")]
    timeouts = [int(t) for t in re.findall(r"run_step \S+ (\d+) ", gpu_branch)]
    assert len(timeouts) >= 6, gpu_branch  # the steps are there and were all found
    assert all(t >= 20 for t in timeouts)  # MIN_STEP_S: none too short to start
    fsdp = [int(t) for t in re.findall(r"run_step (?:bench-fsdp\S*|bench-memory) (\d+) ", gpu_branch)]
    assert fsdp and sum(fsdp) <= reserved  # the FSDP steps are there, in the room kept for them
    assert sum(timeouts) <= budget, timeouts
