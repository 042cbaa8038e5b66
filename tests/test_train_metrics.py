"""MFU only from a known device peak, and metrics.jsonl clean-up on resume."""

from __future__ import annotations

import json

import pytest
import torch

from dist_llm.training import metrics


@pytest.mark.parametrize(("name", "precision", "peak"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H200", "fp32", 67e12),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA A10", "bf16", 125e12),  # not mistaken for an A100, nor the other way round
    ("NVIDIA GeForce GTX 1080", "bf16", None),  # not in the table: unknown, never guessed
])
def test_peak_flops_table(monkeypatch, name, precision, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert metrics.peak_flops(torch.device("cuda", 0), precision) == peak


def test_mfu_is_unknown_off_the_table():
    assert metrics.peak_flops(torch.device("cpu"), "fp32") is None
    assert metrics.mfu(6e6, 1000.0, None) is None
    assert metrics.mfu(6e9, 50_000.0, 1e15) == pytest.approx(0.3)


def test_truncate_metrics_drops_lines_after_the_checkpoint(tmp_path):
    lines = [{"step": s, "train_loss": 1.0} for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 7, "tr')
    metrics.truncate_metrics(tmp_path, last_step=4)
    kept = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [1, 2, 3, 4]


def test_metrics_log_appends_json_lines_and_keeps_null_mfu(tmp_path):
    log = metrics.MetricsLog(tmp_path)
    log.write({"step": 1, "train_loss": 2.5, "mfu": None, "peak_mem_mb": None})
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "train_loss": 2.5, "mfu": None}
