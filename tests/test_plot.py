"""Training curves: the plotted points are the rows of metrics.jsonl; `lmgen plot` writes a PNG."""

from __future__ import annotations

import json
import math
import shutil

import matplotlib
import pytest

matplotlib.use("Agg")

from lmgen.errors import LmgenError  # noqa: E402
from lmgen.plot import plot_runs, read_metrics  # noqa: E402


def _rows(run, kind):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_read_metrics_matches_the_file(tiny_checkpoint):
    curves = read_metrics(tiny_checkpoint)
    train, evals = _rows(tiny_checkpoint, "train"), _rows(tiny_checkpoint, "eval")
    assert curves.train["step"] == [r["step"] for r in train] and len(train) >= 4
    assert curves.train["loss"] == [r["train_loss"] for r in train]
    assert curves.valid["seconds"] == [r["train_seconds"] for r in evals]
    assert curves.valid["loss"] == [r["val_loss"] for r in evals] and len(evals) == 2


def test_plot_runs_draws_every_run_on_one_figure(tiny_checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    with open(other / "metrics.jsonl", "a") as f:
        f.write('{"kind": "eval", "step": 50, "val_lo')  # a row cut short by a crash: skipped
    out = tmp_path / "figs" / "curves.png"
    fig = plot_runs([tiny_checkpoint, other], labels=["a", "b"], out=out)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    (loss_steps, loss_time), (ppl_steps, _) = fig.axes[0:2], fig.axes[2:4]
    evals = _rows(tiny_checkpoint, "eval")
    lines = {line.get_label(): line for line in loss_steps.get_lines()}
    assert set(lines) == {"a train", "a valid", "b train", "b valid"}
    assert list(lines["b valid"].get_xdata()) == [r["step"] for r in evals]
    assert list(lines["a valid"].get_ydata()) == [r["val_loss"] for r in evals]
    ppl = {line.get_label(): line for line in ppl_steps.get_lines()}["a valid"].get_ydata()
    assert list(ppl) == pytest.approx([math.exp(r["val_loss"]) for r in evals])
    assert [line.get_xdata()[-1] for line in loss_time.get_lines()][1] == evals[-1]["train_seconds"]


def test_plot_cli_and_errors(tiny_checkpoint, tmp_path, capsys):
    from lmgen.cli import main

    out = tmp_path / "c.png"
    assert main(["plot", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert out.exists()
    assert main(["plot", str(tmp_path / "no-such-run"), "--out", str(out)]) == 1
    assert "no-such-run does not exist" in capsys.readouterr().err
    with pytest.raises(LmgenError, match="one label per run"):
        plot_runs([tiny_checkpoint], labels=["a", "b"])
