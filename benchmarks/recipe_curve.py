"""Train one recipe for a wall-clock budget and print its validation curve.

For issue 14's aims: the best validation loss within the budget, and whether the loss at
the end is no worse than at half the budget (no overfitting). Every evaluation scores the
whole validation split (``eval_tokens = 0``); the lines come from the run's own
metrics.jsonl. Then the test split (when there is one) is scored exactly, with ``best/``.

    python benchmarks/recipe_curve.py configs/tinyshakespeare-cpu15.toml            # its own --time
    python benchmarks/recipe_curve.py configs/ptb-cpu60.toml --threads 1 --out /tmp/ptb60

Run it on a quiet machine: the budget is wall-clock training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from lmgen import corpora
from lmgen.checkpoint import load_checkpoint
from lmgen.config import load_recipe, parse_duration
from lmgen.evaluate import evaluate_split
from lmgen.train import train


def curve(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "eval"]


def at(evals: list[dict], seconds: float) -> dict:
    """The last evaluation at or before ``seconds`` of training."""
    before = [r for r in evals if r["train_seconds"] <= seconds + 1e-6]
    return before[-1] if before else evals[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a TOML recipe (configs/*.toml)")
    p.add_argument("--time", default="", help="override the recipe's --time budget")
    p.add_argument("--threads", default="", help="override --threads (default: the recipe's, else auto)")
    p.add_argument("--out", default="", help="run folder (default: a fresh folder under /tmp)")
    args = p.parse_args()
    cfg, model_cfg = load_recipe(args.config)
    out = Path(args.out or f"/tmp/recipe-curve-{Path(args.config).stem}-{int(time.time())}")
    changes = {"out": str(out), "eval_tokens": 0, "progress": False}
    if args.time:
        changes["time"] = args.time
    if args.threads:
        changes["threads"] = args.threads
    cfg = dataclasses.replace(cfg, **changes)
    budget = parse_duration(cfg.time)
    print(f"{args.config}: {model_cfg}\n  budget {cfg.time}, out {out}", flush=True)
    t0 = time.time()
    result = train(cfg, model_cfg, overwrite=True, log=lambda m: print("  " + m, flush=True))
    evals = curve(out)
    for r in evals:
        print(f"  eval at {r['train_seconds']:7.1f} s (step {r['step']:6d}): val {r['val_loss']:.4f}", flush=True)
    best = min(evals, key=lambda r: r["val_loss"])
    half, end = at(evals, budget / 2), evals[-1]
    print(f"{Path(args.config).stem}: best val {best['val_loss']:.4f} at {best['train_seconds']:.0f} s; "
          f"at half the budget ({half['train_seconds']:.0f} s) {half['val_loss']:.4f}, at the end "
          f"({end['train_seconds']:.0f} s) {end['val_loss']:.4f} -> "
          f"{'no overfitting' if end['val_loss'] <= half['val_loss'] else 'WORSE at the end'}; "
          f"{result.steps} steps, {result.tokens / max(result.train_seconds, 1e-9):,.0f} tok/s, "
          f"{time.time() - t0:.0f} s wall, torch threads {torch.get_num_threads()}", flush=True)
    corpus = corpora.resolve(cfg.corpus)
    if "test" in corpus.splits:
        ckpt = load_checkpoint(out / "best")
        test = evaluate_split(ckpt.model, ckpt.tokenizer, corpus, "test", batch=1, bptt=256)
        print(f"  test (best/, exact): CE {test.loss:.4f}, ppl {test.perplexity:.2f}"
              + (f", {test.bits_per_char:.4f} bits/char" if test.bits_per_char else ""), flush=True)
    return 0 if math.isfinite(best["val_loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
