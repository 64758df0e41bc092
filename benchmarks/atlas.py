"""The neuron atlas of a char-LSTM trained on python-stdlib, scored on held-out files (issue 18).

Protocol (fixed before any run; nothing here is tuned on part B):

1. Train with ``lmgen train``'s defaults (the README's quick-start recipe: 1 x 256 LSTM,
   AdamW, seed 1337) for a fixed number of optimiser steps (or a wall time, ``--time``) on
   the train split (the first 90% of the characters of the standard library's sources).
2. Held-out text = the valid and test splits (the last 10%). The one file the valid/test
   cut splits in two is joined again, and the text starts at the first top-level line after
   a blank line (the valid split begins inside a file, maybe inside a docstring, where the
   string and comment predicates would read the quotes the wrong way round). Parts A and B
   meet at the top-level line nearest the middle.
3. ``lmgen.atlas.build`` with the whole predicate library; the untrained control is the
   model's initial weights (the training seed).

Aims (issue 18): at least 5 predicates with AUROC_B >= 0.90 and a gain >= +0.10 over the
best control, among them string_literal and comment; the atlas (traces, ranking, controls)
in <= 180 s of CPU for 200k characters on this 1 x 256 model.

``--memory`` instead measures the peak resident memory of ``trace`` alone, each setting in
a fresh subprocess (aim: 200k characters of a 2 x 512 LSTM in < 3 GB).

    python benchmarks/atlas.py --steps 4000 --threads 1 --out atlas.html
    python benchmarks/atlas.py --checkpoint checkpoints/quickstart      # skip the training
    python benchmarks/atlas.py --memory
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AIMS = {"found": 5, "auroc_b": 0.90, "gain": 0.10, "required": ("string_literal", "comment"), "seconds": 180.0}
# A top-level statement after a blank line: a place where no string or bracket is open.
TOP_LEVEL = re.compile(r"\n\n(?=(?:def |class |import |from |@|if __name__))")


def held_out_text(max_chars: int) -> tuple[str, int]:
    """The held-out files (step 2 of the protocol) and the first character of part B."""
    from lmgen import corpora

    corpus = corpora.resolve("python-stdlib")
    valid, test = list(corpus.documents("valid")), list(corpus.documents("test"))
    files = valid[:-1] + [valid[-1] + test[0]] + test[1:]  # the cut file, whole again
    text = "\n".join(files)
    first = TOP_LEVEL.search(text)
    text = text[first.end() :] if first else text
    if max_chars and len(text) > max_chars:
        ends = [m.start() for m in TOP_LEVEL.finditer(text, 0, max_chars)]
        text = text[: ends[-1] + 1] if ends else text[:max_chars]
    cuts = [m.end() for m in TOP_LEVEL.finditer(text)]
    if not cuts:
        raise SystemExit("the held-out text has no top-level line to split at")
    split_at = min(cuts, key=lambda c: abs(c - len(text) / 2))
    return text, split_at


def train_model(steps: int, out: Path, seed: int, threads: int, limit: str = ""):
    from lmgen.config import ModelConfig, TrainConfig
    from lmgen.train import train

    cfg = TrainConfig(steps=0 if limit else steps, time=limit, seed=seed, progress=False, out=str(out),
                      device="cpu", eval_every=max(steps, 1) if not limit else 1000,
                      threads=str(threads) if threads else "auto")
    t0 = time.perf_counter()
    result = train(cfg, ModelConfig(), overwrite=True, log=lambda msg: None)
    print(f"trained {result.steps} steps ({result.tokens:,} tokens) in {time.perf_counter() - t0:.0f} s; "
          f"validation loss {result.val_loss:.3f} nats/char")
    return out / "last"


def run_atlas(args) -> int:
    import torch

    from lmgen.atlas import build
    from lmgen.checkpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    text, split_at = held_out_text(args.max_chars)
    print(f"held-out: {len(text):,} characters; A = [0, {split_at:,}), B = [{split_at:,}, {len(text):,})")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        path = Path(args.checkpoint) if args.checkpoint else train_model(args.steps, run, args.seed, args.threads,
                                                                         args.time)
        ckpt = load_checkpoint(path)
        seed = int(ckpt.config.get("train", {}).get("seed", args.seed))
        t0, c0 = time.perf_counter(), time.process_time()
        atlas = build(ckpt.model, ckpt.tokenizer, text, split_at=split_at, seed=seed, allow_unknown=True,
                      dtype=args.dtype, probe=args.probe, log=print)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in atlas.seconds.items())
    print(f"atlas built in {wall:.0f} s wall, {cpu:.0f} s CPU ({parts})")
    print(atlas.table())
    if args.out:
        atlas.save(args.out)
        print(f"wrote {args.out}")
    found = [r.predicate.name for r in atlas.rows
             if r.best is not None and r.best.auroc_b >= AIMS["auroc_b"] and r.gain >= AIMS["gain"]]
    checks = [
        (f">= {AIMS['found']} predicates with AUROC_B >= {AIMS['auroc_b']} and gain >= +{AIMS['gain']} "
         f"({len(found)}: {', '.join(found)})", len(found) >= AIMS["found"]),
        *[(f"{name} among them", name in found) for name in AIMS["required"]],
        (f"atlas CPU time <= {AIMS['seconds']:.0f} s ({cpu:.0f} s for {len(text):,} characters)",
         cpu <= AIMS["seconds"]),
    ]
    for label, ok in checks:
        print(f"  [{'met' if ok else 'NOT met'}] {label}")
    pattern_search(atlas, text, split_at)
    return 0 if all(ok for _, ok in checks) else 1


def pattern_search(atlas, text: str, split_at: int) -> None:
    """Figures, no aim: select the first span of part A inside a predicate (8-40 characters)
    that has a pattern (h and c units, signed, the highest threshold of 0.5, 0.3, 0.2, 0.1),
    and count how many of the top 10 matches in part B lie inside the predicate too."""
    import numpy as np

    from lmgen.errors import ConfigError
    from lmgen.predicates import PREDICATES
    from lmgen.probe import find_pattern

    print("pattern search (first span of part A with a pattern; top 10 matches in part B):")
    for name in ("parentheses", "string_literal", "comment"):
        inside = PREDICATES[name].mask(text)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], inside[:split_at].astype(int), [0]])))
        found = None
        for a, b in [(a, b) for a, b in zip(edges[::2], edges[1::2]) if 8 <= b - a <= 40][:50]:
            for threshold in (0.5, 0.3, 0.2, 0.1):
                try:
                    found = find_pattern(atlas.trace, a, b, threshold, kinds=("h", "c"), signed=True,
                                         search=(split_at, len(text)))
                    break
                except ConfigError:
                    continue
            if found is not None:
                break
        if found is None:
            print(f"  {name}: no span of part A has a pattern")
            continue
        hits = sum(inside[m.start : m.end].mean() > 0.5 for m in found.matches[:10])
        print(f"  {name:15s} {text[found.start:found.end]!r:44s} {len(found.units)} units at {found.threshold}: "
              f"{hits} of {min(10, len(found.matches))} inside")


# -- peak memory of trace --------------------------------------------------------------------

_MEASURE = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from lmgen.activations import trace
from lmgen.config import ModelConfig
from lmgen.model import RNNLM
from lmgen.tokenizer import build_tokenizer
chars, hidden, layers, dtype, kinds, chunk = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
text = "".join(rng.choice(list("abcdefghij klmnop\n\"()[]:/.0123456789ABCDEF"), chars))
tok = build_tokenizer("char", [text])
torch.manual_seed(0)
model = RNNLM(ModelConfig(cell="lstm", vocab_size=tok.vocab_size, embed=64, hidden=hidden, layers=layers))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
tr = trace(model, tok, text, dtype=dtype, kinds=kinds, chunk=chunk)
print(json.dumps({"seconds": time.perf_counter() - t0, "before_mb": before / 1024,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "stored_mb": sum(v.nbytes for acts in tr.layers for v in acts.values()) / 2**20}))
"""


def run_memory(args) -> int:
    settings = [  # (characters, hidden, layers, dtype, kinds, chunk)
        (200_000, 512, 2, "float16", None, 4096),
        (200_000, 512, 2, "float32", ["h", "c"], 4096),
        (520_000, 256, 1, "float16", None, 4096),
        (300_000, 256, 1, "float32", None, 4096),
    ]
    ok = True
    for setting in settings:
        chars, hidden, layers, dtype, kinds, chunk = setting
        proc = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(setting)], capture_output=True, text=True)
        if proc.returncode:
            print(f"{setting}: failed\n{proc.stderr[-2000:]}")
            ok = False
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{chars:>8,} chars  {layers} x {hidden}  {dtype:8s} kinds {','.join(kinds) if kinds else 'all':6s}"
              f"  peak RSS {r['peak_mb']:6,.0f} MB (stored {r['stored_mb']:5,.0f} MB, before {r['before_mb']:4.0f} MB)"
              f"  {r['seconds']:5.1f} s")
        if (chars, hidden, layers) == (200_000, 512, 2) and dtype == "float16" and kinds is None:
            met = r["peak_mb"] < 3 * 1024
            ok &= met
            print(f"  [{'met' if met else 'NOT met'}] 200k characters of a 2 x 512 LSTM, all kinds in float16: < 3 GiB")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000, help="optimiser steps of the training (fixed, not wall time)")
    p.add_argument("--time", default="", help="train for this wall time instead of --steps (e.g. 10m: the "
                                              "README's recipe, `lmgen train --time 10m`)")
    p.add_argument("--probe", action="store_true", help="also a sparse logistic probe per predicate")
    p.add_argument("--seed", type=int, default=1337, help="training seed (lmgen train's default)")
    p.add_argument("--checkpoint", default=None, help="use this checkpoint instead of training one")
    p.add_argument("--run-dir", default=None, help="train into this folder and keep it (default: a temporary one)")
    p.add_argument("--max-chars", type=int, default=200_000, help="cap on held-out characters (0 = all)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="activation storage")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default=None, help="write the atlas page here")
    p.add_argument("--memory", action="store_true", help="measure the peak memory of trace instead")
    args = p.parse_args(argv)
    return run_memory(args) if args.memory else run_atlas(args)


if __name__ == "__main__":
    sys.exit(main())
