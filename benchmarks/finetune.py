"""Does fine-tuning pay? Issue 17's measurement of ``lmgen train --init-from``.

    parent   a char model trained on enwiki-xml-sample for 10 minutes
    child    the parent fine-tuned (--init-from, --extend-vocab, --lr the parent's / 2) for
             2 minutes on the first 100 KB of War and Peace
    control  the same model trained from scratch on the same 100 KB for 12 minutes

Each run keeps ``best/`` by its own validation split (lmgen's 90/5/5 cut of the 100 KB for the
child and the control). Then each best/ is scored on war-and-peace's *valid* split (text the
100 KB does not contain), and the script prints nats per character and the gap, control minus
child; the aim is a gap of at least 0.15 nats/char. The parent's own score (no fine-tuning) is
printed too. The control's tokenizer knows only the 100 KB's characters; the few others of the
valid split are <unk> for it, which if anything flatters the control.

    python benchmarks/finetune.py                            # 10 min + 2 min + 12 min of training
    python benchmarks/finetune.py --scale 0.1 --threads 1    # 1 min + 12 s + 72 s: a smoke run

Budgets are training time (wall clock): run it on a quiet machine. Figures from a --scale other
than 1 are not the issue's setting, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from lmgen import corpora
from lmgen.checkpoint import load_checkpoint
from lmgen.config import ModelConfig, TrainConfig
from lmgen.errors import LmgenError
from lmgen.evaluate import evaluate_split
from lmgen.finetune import finetune_settings
from lmgen.train import train

PARENT_CORPUS, TARGET_CORPUS = "enwiki-xml-sample", "war-and-peace"
PARENT_S, CHILD_S, CONTROL_S = 600.0, 120.0, 720.0
SLICE_BYTES = 100_000
AIM = 0.15


def first_bytes(corpus: corpora.Corpus, n: int, path: Path) -> Path:
    """The first ``n`` bytes of the corpus (its train split starts the book), cut at a character boundary."""
    text = corpus.text("train").encode("utf-8")[:n].decode("utf-8", errors="ignore")
    path.write_text(text, encoding="utf-8")
    return path


def score(run: Path, valid: corpora.Corpus, max_tokens: int) -> tuple[float, int]:
    """nats per character of ``run``'s best/ on the valid split (batched, as `lmgen eval` scores by default)."""
    ckpt = load_checkpoint(run)
    result = evaluate_split(ckpt.model, ckpt.tokenizer, valid, "valid", batch=16, bptt=256, max_tokens=max_tokens)
    per = result.chars or result.tokens  # a prefix (--max-tokens) has no character count: per token then
    return result.nll / per, result.unknown


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every training budget (0.1: 1 min, 12 s, 72 s; default 1: the issue's setting)")
    p.add_argument("--threads", default="auto", help="--threads of every run (default auto)")
    p.add_argument("--hidden", type=int, default=ModelConfig.hidden, help="hidden size of the char LSTM")
    p.add_argument("--layers", type=int, default=ModelConfig.layers, help="recurrent layers")
    p.add_argument("--child-lr", type=float, default=None, help="the child's --lr (default: the parent's / 2)")
    p.add_argument("--child-dropout", type=float, default=None,
                   help="the child's --dropout (default: the parent's; a regulariser, free to change when fine-tuning)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validations (best/ selection)")
    p.add_argument("--max-tokens", type=int, default=0, help="score only this prefix of the valid split (0 = all)")
    p.add_argument("--out", default="", help="folder for the three runs (default: a fresh folder under /tmp)")
    p.add_argument("--reuse", default="", help="comma-separated runs of --out to keep instead of training again "
                   "(parent, control), e.g. to try another --child-lr")
    args = p.parse_args()
    if not 0 < args.scale <= 10 or not math.isfinite(args.scale):
        p.error(f"--scale must be in (0, 10], got {args.scale}")
    out = Path(args.out or f"/tmp/finetune-bench-{int(time.time())}")
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = ModelConfig(hidden=args.hidden, layers=args.layers)
    common = dict(threads=args.threads, eval_every=args.eval_every, progress=False)
    budget = {name: f"{seconds * args.scale:g}s" for name, seconds in
              (("parent", PARENT_S), ("child", CHILD_S), ("control", CONTROL_S))}
    target = corpora.resolve(TARGET_CORPUS)
    text = first_bytes(target, SLICE_BYTES, out / "war-and-peace-100k.txt")
    print(f"scale {args.scale:g}: parent {budget['parent']}, child {budget['child']}, control {budget['control']}; "
          f"{model_cfg.layers}x{model_cfg.hidden} LSTM; runs in {out}", flush=True)

    reuse = set(filter(None, args.reuse.split(",")))
    if reuse - {"parent", "control"}:
        p.error(f"--reuse takes parent and/or control, got {args.reuse!r}")

    def run(name: str, cfg: TrainConfig, mcfg: ModelConfig) -> None:
        if name in reuse and (out / name / "best").exists():
            print(f"{name}: reusing {out / name}", flush=True)
            return
        start = time.perf_counter()
        result = train(cfg, mcfg, overwrite=True, log=lambda msg: print(f"  [{name}] {msg}", flush=True))
        print(f"{name}: {result.steps} steps in {time.perf_counter() - start:.0f} s, best val "
              f"{result.best_val_loss:.4f} nats/char on its own split", flush=True)

    # The parent validates on a 50k-token prefix: its whole split (300k) would take longer than its steps.
    run("parent", TrainConfig(corpus=PARENT_CORPUS, time=budget["parent"], out=str(out / "parent"), eval_tokens=50_000,
                              **common), model_cfg)
    child_given = dict(init_from=str(out / "parent"), corpus=str(text), extend_vocab=True, time=budget["child"],
                       out=str(out / "child"), **common)
    if args.child_lr is not None:
        child_given["lr"] = args.child_lr
    child_model = {} if args.child_dropout is None else {"dropout": args.child_dropout}
    run("child", *finetune_settings(child_model, child_given))
    run("control", TrainConfig(corpus=str(text), time=budget["control"], out=str(out / "control"), **common),
        model_cfg)

    scores = {name: score(out / name, target, args.max_tokens) for name in ("parent", "child", "control")}
    unit = "nats/token" if args.max_tokens else "nats/char"
    print(f"\n{TARGET_CORPUS} valid split, best/ of each run ({unit}):")
    for name, what in (("parent", f"{PARENT_CORPUS} only, {budget['parent']}"),
                       ("child", f"parent + {budget['child']} on the first 100 KB"),
                       ("control", f"from scratch, {budget['control']} on the first 100 KB")):
        loss, unknown = scores[name]
        print(f"  {name:8} {loss:.4f}   ({what}; {unknown:,} <unk> targets)")
    gap = scores["control"][0] - scores["child"][0]
    verdict = "met" if gap >= AIM else "not met"
    scaled = "" if args.scale == 1 else f"  [SCALED x{args.scale:g}: not the issue's setting]"
    print(f"  gap (control - child): {gap:+.4f} {unit}; aim >= {AIM} {verdict}{scaled}")
    (out / "results.json").write_text(json.dumps({"scale": args.scale, "unit": unit, "gap": gap, "budgets": budget,
                                                  "scores": {k: v[0] for k, v in scores.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LmgenError as exc:  # e.g. a run folder in use: one line, as lmgen itself says it
        raise SystemExit(f"finetune.py: error: {exc}") from None
