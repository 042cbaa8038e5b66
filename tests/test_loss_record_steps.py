"""Each train_loss record says how many steps it averages: log.interval, except at the run's end and in the
first record after a resume, which average fewer."""

from __future__ import annotations

from trainer_runs import read_jsonl, tiny_train_args

from dist_llm.train import main


def _averaged(run_dir) -> list[tuple[int, int]]:
    return [(r["step"], r["steps"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]


def test_each_train_loss_record_carries_the_steps_it_averages(tiny_data, tmp_path) -> None:
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--log.interval=3", "--checkpoint.interval=4")
    assert main([*args, "--train.max_steps=4"]) == 0
    assert _averaged(run_dir) == [(3, 3), (4, 1)]  # the run's last step ends the window early
    assert main([*args, "--train.max_steps=8", "--resume", "auto"]) == 0
    assert _averaged(run_dir) == [(3, 3), (4, 1), (6, 2), (8, 2)]  # resumed at step 4: steps 5 and 6
