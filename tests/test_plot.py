"""dist_llm.plot: loss/LR curves from metrics.jsonl, several runs overlaid, matplotlib optional."""

import builtins
import json
import math

import pytest

from dist_llm import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, steps=20, lr_scale=1.0, truncated_tail=False):
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "tokens": step * 4096, "train_loss": 8.0 * math.exp(-step / 10) + 2.0,
                  "lr": lr_scale * 1e-3 * min(1.0, step / 5)}
        if step % 5 == 0:
            record["val_loss"] = record["train_loss"] + 0.1
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if truncated_tail:
        text += '{"step": 21, "tok'  # the trainer was killed mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # two panels with curves, axes and legend, not an empty canvas


def test_plot_runs_overlays_runs_into_png(tmp_path):
    a = write_run(tmp_path / "a" / "run")
    b = write_run(tmp_path / "b" / "run", lr_scale=0.5)
    out = plot.plot_runs([a, b], tmp_path / "out" / "loss.png")
    assert out == tmp_path / "out" / "loss.png"
    assert_png(out)
    # No temporary file is left next to the output.
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]
    # Two runs with the same directory name get distinguishable labels.
    assert plot._run_names([a, b]) == ["a/run", "b/run"]


def test_cli_writes_png(tmp_path, capsys):
    run = write_run(tmp_path / "run1")
    out = tmp_path / "curves.png"
    assert plot.main([str(run), "--out", str(out)]) == 0
    assert_png(out)
    assert str(out) in capsys.readouterr().out


def test_truncated_last_line_is_skipped_with_a_note(tmp_path, capsys):
    run = write_run(tmp_path / "run", truncated_tail=True)
    records = plot.read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 21))
    assert f"note: {run / 'metrics.jsonl'}:21: skipping a truncated last line" in capsys.readouterr().err
    assert plot.read_metrics(run / "metrics.jsonl") == records  # the file itself may be given


def test_malformed_middle_line_is_an_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(plot.PlotError, match=r"metrics.jsonl:2: not valid JSON"):
        plot.read_metrics(run)


def test_missing_metrics_is_a_clear_cli_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "not found" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("text", ["", '{"step": 0, "lr": 0.0}\n{"event": "stop_signal", "step": 0}\n'],
                         ids=["empty", "no_losses"])
def test_metrics_with_no_losses_is_a_clear_cli_error(tmp_path, capsys, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(text)
    good = write_run(tmp_path / "good")
    for runs in ([run], [good, run]):  # overlaid with a good run too: not a plot missing a run
        assert plot.main([*map(str, runs), "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert f"error: {run / 'metrics.jsonl'}: no train_loss or val_loss records" in err
        assert "nothing to plot" in err
        assert not (tmp_path / "x.png").exists()


def test_the_trainer_notes_a_run_with_nothing_to_plot_and_goes_on(tmp_path):
    from dist_llm.training.outputs import write_loss_plot

    (tmp_path / "metrics.jsonl").write_text("")
    message = write_loss_plot(tmp_path)  # what the trainer prints at the end of a run
    assert message.startswith("loss curve: skipped (") and "nothing to plot" in message
    assert not (tmp_path / "loss.png").exists()
    (tmp_path / "metrics.jsonl").unlink()
    assert "loss curve: skipped (" in write_loss_plot(tmp_path) and "not found" in write_loss_plot(tmp_path)


def test_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot.main([str(run), "--out", str(tmp_path / "loss.png")]) == 1
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and "bash install.sh plot" in err
    assert not (tmp_path / "loss.png").exists()
