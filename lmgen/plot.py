"""Training curves from run folders: loss and perplexity against steps and wall time.

A run folder's ``metrics.jsonl`` holds "train" rows (step, train_seconds, train_loss) and
"eval" rows (step, train_seconds, val_loss, val_ppl). :func:`plot_runs` draws several runs
on one 2x2 figure (rows: loss, perplexity; columns: steps, training time), one colour per
run, training as a line and validation as dots joined by a line. matplotlib is imported
here only, so ``lmgen --help`` stays fast.

>>> fig = plot_runs(["checkpoints/lstm", "checkpoints/gru"])  # doctest: +SKIP
>>> fig.savefig("curves.png")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import LmgenError

METRICS_FILE = "metrics.jsonl"


@dataclass
class Curves:
    """The series of one run, read from its ``metrics.jsonl``."""

    name: str
    train: dict[str, list[float]] = field(default_factory=lambda: {"step": [], "seconds": [], "loss": []})
    valid: dict[str, list[float]] = field(default_factory=lambda: {"step": [], "seconds": [], "loss": []})


def read_metrics(run: str | os.PathLike, name: str | None = None) -> Curves:
    """Read a run folder (or a metrics.jsonl path); rows that are not JSON are skipped.

    Raises :class:`LmgenError` when there is no metrics file or it holds no rows.
    """
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise LmgenError(f"{path} does not exist: give a run folder written by `lmgen train --out DIR`")
    curves = Curves(name or (path.parent.name if path.name == METRICS_FILE else path.stem))
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash mid-write
        if not isinstance(row, dict):
            continue
        kind, key = row.get("kind"), None
        if kind == "train" and row.get("train_loss") is not None:
            series, key = curves.train, "train_loss"
        elif kind == "eval" and row.get("val_loss") is not None:
            series, key = curves.valid, "val_loss"
        if key is None or not math.isfinite(row[key]):
            continue
        series["step"].append(row.get("step", 0))
        series["seconds"].append(row.get("train_seconds", 0.0))
        series["loss"].append(row[key])
    if not curves.train["step"] and not curves.valid["step"]:
        raise LmgenError(f"{path} holds no training or validation rows yet; train for a few steps first")
    return curves


def plot_runs(runs: Sequence[str | os.PathLike], *, labels: Sequence[str] | None = None,
              out: str | os.PathLike | None = None, title: str | None = None) -> Any:
    """One figure comparing runs: loss (nats/token) and perplexity vs steps and training time.

    Returns the matplotlib Figure (shown inline in a notebook); with ``out`` it is also
    saved (PNG, SVG or PDF by the suffix).

    >>> plot_runs(["checkpoints/a", "checkpoints/b"], labels=["LSTM", "GRU"], out="cmp.png")  # doctest: +SKIP
    """
    import matplotlib

    if out is not None and "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")  # writing a file needs no display
    import matplotlib.pyplot as plt

    if not runs:
        raise LmgenError("give at least one run folder to plot")
    if labels is not None and len(labels) != len(runs):
        raise LmgenError(f"{len(labels)} labels for {len(runs)} runs; give one label per run")
    names = list(labels) if labels is not None else _names(runs)
    curves = [read_metrics(run, name) for run, name in zip(runs, names)]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        for col, x in enumerate(("step", "seconds")):
            for row, transform in enumerate((lambda v: v, lambda v: math.exp(min(v, 700.0)))):
                ax = axes[row][col]
                if c.train["step"]:
                    ax.plot(c.train[x], [transform(v) for v in c.train["loss"]], color=color, alpha=0.45,
                            linewidth=1, label=f"{c.name} train")
                if c.valid["step"]:
                    ax.plot(c.valid[x], [transform(v) for v in c.valid["loss"]], color=color, marker="o",
                            markersize=3, linewidth=1.8, label=f"{c.name} valid")
    axes[0][0].set_ylabel("loss (nats/token)")
    axes[1][0].set_ylabel("perplexity")
    for ax in axes[1]:
        ax.set_yscale("log")
    axes[1][0].set_xlabel("optimiser steps")
    axes[1][1].set_xlabel("training time (s)")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    axes[0][1].legend(fontsize="small", loc="upper right")
    fig.suptitle(title or "training curves: " + ", ".join(c.name for c in curves))
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig


def _names(runs: Sequence[str | os.PathLike]) -> list[str]:
    """Short distinct labels: the folder names, or the paths where names repeat."""
    names = [Path(r).resolve().name for r in runs]
    if len(set(names)) < len(names):
        return [str(r) for r in runs]
    return names
