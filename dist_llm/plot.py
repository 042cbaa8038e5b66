"""Loss curves from one or more runs: `python -m dist_llm.plot RUN_DIR [RUN_DIR ...] --out loss.png`.

Reads each run's `metrics.jsonl` (one JSON object per line, written by the trainer) and draws train and
validation loss against tokens seen on the top panel and the learning rate on the bottom panel, with the
runs overlaid and labelled by their directory names. A mixture's runs also log each source's validation
loss (`val_loss/<name>`): those are drawn as thinner dotted lines in the run's colour, one marker per
source, next to the weighted mean (`val_loss`). matplotlib is an optional extra, imported only here
and only when a plot is drawn; the trainer calls `plot_runs` directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dist_llm.utils.atomic_io import atomic_write

INSTALL_HINT = "matplotlib is needed for plots: pip install matplotlib  (or: bash install.sh plot)"
LOSS_KEYS = ("train_loss", "val_loss")


class PlotError(ValueError):
    """Bad input to the plot command (missing or malformed metrics)."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl`, in file order.

    A truncated last line (the trainer was killed mid-write) is skipped with a note on stderr; a malformed
    line anywhere else is an error, since it means the file is not what we think it is. `run_dir` may also
    be the metrics.jsonl file itself.
    """
    path = Path(run_dir)
    if path.name != "metrics.jsonl" or path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path}: not found (expected a run directory with the metrics.jsonl of training)")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                print(f"note: {path}:{lineno}: skipping a truncated last line (its writer was stopped "
                      "mid-line)", file=sys.stderr)
                continue
            raise PlotError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise PlotError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _series(records: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    points = [(r[x_key], r[y_key]) for r in records if r.get(x_key) is not None and r.get(y_key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


SOURCE_MARKERS = "s^vD<>"


def _source_names(records: list[dict[str, Any]]) -> list[str]:
    """The mixture sources a run logged a validation loss for (val_loss/<name>), in first-seen order."""
    names: dict[str, None] = {}
    for record in records:
        names.update((key.split("/", 1)[1], None) for key in record if key.startswith("val_loss/"))
    return list(names)


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names as legend labels; the parent is prepended where two runs share a name."""
    paths = [p.resolve() for p in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def plot_runs(run_dirs: Sequence[str | Path], out_path: str | Path) -> Path:
    """Draw the loss and LR curves of `run_dirs` into the PNG `out_path`; returns the path written."""
    run_dirs = [Path(d).parent if Path(d).name == "metrics.jsonl" and Path(d).is_file() else Path(d)
                for d in run_dirs]  # a run's metrics.jsonl stands for its run (and labels it)
    if not run_dirs:
        raise PlotError("no run directories given")
    all_records = [read_metrics(d) for d in run_dirs]
    for run_dir, records in zip(run_dirs, all_records, strict=True):
        # An empty figure looks like a plot of a run that learned nothing: refuse instead.
        if not any(r.get(k) is not None for r in records for k in LOSS_KEYS):
            raise PlotError(f"{run_dir / 'metrics.jsonl'}: no {' or '.join(LOSS_KEYS)} records "
                            f"({len(records)} records in all), nothing to plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter
    except ImportError:
        raise ImportError(INSTALL_HINT) from None

    # Tokens seen is the fair x-axis for comparing runs with different batch sizes; fall back to the
    # step only if no run logged tokens at all.
    has_tokens = any("tokens" in r for records in all_records for r in records)
    x_key = "tokens" if has_tokens else "step"

    # Figure + Agg canvas directly rather than pyplot: no global backend state in the caller's process.
    fig = Figure(figsize=(9, 7), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    colors = [f"C{i % 10}" for i in range(len(run_dirs))]
    for name, records, color in zip(_run_names(run_dirs), all_records, colors, strict=True):
        x, y = _series(records, x_key, "train_loss")
        if x:
            ax_loss.plot(x, y, color=color, alpha=0.8, linewidth=1.0, label=f"{name} train")
        x, y = _series(records, x_key, "val_loss")
        if x:
            ax_loss.plot(x, y, color=color, linestyle="--", marker="o", markersize=3, label=f"{name} val")
        for i, source in enumerate(_source_names(records)):
            x, y = _series(records, x_key, f"val_loss/{source}")
            ax_loss.plot(x, y, color=color, linestyle=":", linewidth=1.0, marker=SOURCE_MARKERS[i % 6],
                         markersize=3, alpha=0.7, label=f"{name} val {source}")
        x, y = _series(records, x_key, "lr")
        if x:
            ax_lr.plot(x, y, color=color, label=name)
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("tokens seen" if has_tokens else "step")
    ax_lr.grid(alpha=0.3)
    ax_lr.xaxis.set_major_formatter(EngFormatter())  # 800k, 1.2M, 3G tokens rather than 8e5
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return atomic_write(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_llm.plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories holding metrics.jsonl (or those files)")
    parser.add_argument("--out", default="loss.png", help="PNG file to write (default: loss.png)")
    args = parser.parse_args(argv)
    try:
        out = plot_runs(args.runs, args.out)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
