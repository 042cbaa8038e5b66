"""`python -m dist_llm.generate ... | head`: the reader going away ends generation quietly, with exit 0."""

from __future__ import annotations

import os
import subprocess
import sys

from after_training_runs import make_run, random_model, train_tiny_tokenizer


def test_generate_into_a_pipe_closed_by_head_exits_quietly(tmp_path):
    tokenizer = train_tiny_tokenizer(tmp_path)
    run = make_run(tmp_path / "run", tokenizer, random_model(tokenizer.vocab_size))
    generate = [sys.executable, "-m", "dist_llm.generate", "--run", str(run), "--prompt", "The quick brown",
                "--max-new-tokens", "3000", "--device", "cpu", "--seed", "0", "--temperature", "1.5"]
    # pipefail: the pipeline's status is generate's when it fails, head's (0) otherwise.
    command = "set -o pipefail; " + " ".join(f"'{a}'" for a in generate) + " | head -c 12"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout == "The quick br"
    assert proc.returncode == 0, proc.stderr
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("loaded ")  # its own messages still arrive
