"""One progress line: the trainer's evaluation, checkpoint and sample lines print above one live bar (as
tqdm.write does), with no frozen copies of the bar left behind, and the resolved config stays off the
screen (it is in RUN/config.json)."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from trainer_runs import tiny_train_args

from dist_llm.training.metrics import console_line, progress_bar


class FakeTerminal(io.StringIO):
    """stdout and stderr of a terminal: one screen, which says it is a TTY."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        """The lines a terminal would show: '\\r' returns to the line's start, later text overwrites."""
        lines, line, col = [], [], 0
        for ch in self.getvalue():
            if ch == "\r":
                col = 0
            elif ch == "\n":
                lines.append("".join(line).rstrip())
                line, col = [], 0
            else:
                line[col:col + 1] = [ch]
                col += 1
        return lines + (["".join(line).rstrip()] if line else [])


def _is_bar(line: str) -> bool:
    return re.search(r"\d+/\d+ \[", line) is not None  # tqdm's "3/8 [00:01<00:02, ...]"


def test_console_lines_print_above_the_live_bar(monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    bar = progress_bar(True, total=3, initial=0)
    for step in range(3):
        bar.update(1)
        bar.refresh()
        console_line(f"step {step + 1}: val_loss 1.0")
    bar.close()
    screen = [line for line in term.screen() if line]
    assert screen[:3] == ["step 1: val_loss 1.0", "step 2: val_loss 1.0", "step 3: val_loss 1.0"]
    assert len(screen) == 4 and _is_bar(screen[3]) and "3/3" in screen[3]


@pytest.mark.usefixtures("one_thread")
def test_a_run_leaves_one_bar_and_no_config_dump(tiny_data, tmp_path, monkeypatch):
    from dist_llm.train import main

    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, run_dir, "--log.progress_bar=true", "--checkpoint.interval=4")
    assert main(args) == 0
    screen = term.screen()
    bars = [line for line in screen if _is_bar(line)]
    assert len(bars) == 1 and "8/8" in bars[0], "\n".join(screen)  # the final bar only, no frozen copies
    evals = [line for line in screen if line.startswith("step ") and "val_loss" in line]
    assert [line.split(":")[0] for line in evals] == ["step 0", "step 4", "step 8"]
    assert sum(line.startswith("checkpoint: ") for line in screen) == 2
    assert screen.index(bars[0]) > max(screen.index(line) for line in evals)  # the bar stays below
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["max_steps"] == 8 and '"max_steps"' not in term.getvalue()
    summary = [line for line in screen if line.startswith("dist_llm.train: ")]
    assert len(summary) == 1 and f"full config: {run_dir / 'config.json'}" in summary[0]
