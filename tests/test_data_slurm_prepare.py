"""slurm/prepare.sh: the array of --part tasks and the merge job, run by a stand-in `sbatch` that executes
each job at once (no cluster needed), give the same data as a one-machine prepare."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_data_prepare import make_tokenizer, nasty_docs, write_txt
from test_data_shards import read_stream

from dist_llm.data import prepare_corpus

ROOT = Path(__file__).resolve().parent.parent

# Runs the submitted script as SLURM would: every array task (or the one job) with SLURM's variables.
FAKE_SBATCH = textwrap.dedent("""\
    #!{python}
    import os, subprocess, sys
    args, opts = sys.argv[1:], {{}}
    while args[0].startswith("--"):
        key, _, value = args.pop(0)[2:].partition("=")
        opts[key] = value
    with open(os.environ["FAKE_SBATCH_LOG"], "a") as log:
        log.write(" ".join(f"--{{k}}={{v}}" for k, v in opts.items()) + "\\n")
    job = str(100 + sum(1 for _ in open(os.environ["FAKE_SBATCH_LOG"])))
    env = dict(os.environ, SLURM_JOB_ID=job, SLURM_SUBMIT_DIR=opts["chdir"], SLURM_CPUS_PER_TASK="1")
    tasks = [None]
    if "array" in opts:
        low, high = map(int, opts["array"].split("-"))
        tasks = range(low, high + 1)
    for task in tasks:
        task_env = env if task is None else dict(env, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_JOB_ID=job)
        logs = os.path.dirname(os.environ["FAKE_SBATCH_LOG"])
        with open(os.path.join(logs, f"slurm-{{job}}_{{task}}.out"), "w") as output:
            if subprocess.run(["bash", *args], env=task_env, cwd=opts["chdir"], stdout=output,
                              stderr=subprocess.STDOUT).returncode:
                sys.exit(f"job {{job}} task {{task}} failed: see {{output.name}}")
    print(job + ";cluster")
""")


@pytest.mark.skipif(shutil.which("bash") is None, reason="slurm/prepare.sh is a bash script")
def test_slurm_prepare_array_and_merge_equal_one_prepare(tmp_path):
    tok = make_tokenizer()
    tok.save(tmp_path / "tok")
    rng = random.Random(5)
    (tmp_path / "corpus").mkdir()
    for i in range(5):
        write_txt(tmp_path / "corpus" / f"{i}.txt", nasty_docs(rng, 10 + i), "newlines")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable))
    (bin_dir / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", PARTS="3",
               FAKE_SBATCH_LOG=str(tmp_path / "sbatch.log"),
               PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
    env.pop("SLURM_JOB_ID", None)
    out = tmp_path / "tokens"
    glob = str(tmp_path / "corpus" / "*.txt")
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "prepare.sh"), "--input", glob, "--tokenizer",
                           str(tmp_path / "tok"), f"--out={out}", "--val-fraction", "0.2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted: prepare array job 101 (3 tasks), merge job 102" in proc.stdout
    log = (tmp_path / "sbatch.log").read_text().splitlines()
    assert "--array=0-2" in log[0] and "--dependency=afterok:101" in log[1]
    parts = [f"part-{i:05d}-of-00003" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", *parts]
    single = tmp_path / "single"
    prepare_corpus([glob], tok, single, workers=1, val_fraction=0.2, progress=False)
    for split in ("train", "val"):
        assert read_stream(out, split) == read_stream(single, split)

    bad = subprocess.run(["bash", str(ROOT / "slurm" / "prepare.sh"), "--input", glob],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage: PARTS=N" in bad.stderr
