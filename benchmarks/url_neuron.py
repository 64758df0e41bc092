"""Is there a URL-detector unit in a char-LSTM trained on Wikipedia XML? (issue 6)

Protocol (fixed before any run; nothing here is tuned on part B):

1. Train a char-LSTM (1 x 256 by default) for a fixed number of optimiser steps on the
   train split of enwiki-xml-sample (bytes 0-90%).
2. Held-out text = the whole <page>...</page> elements of the valid and test splits
   (the last 10% of bytes). Pages are split into two halves A and B by characters, at a
   page boundary: |<--- A: choose --->|<--- B: report --->|.
3. Predicates: URL_REGEX ("inside a URL") and WIKILINK_REGEX ("inside [[ ]]") from
   lmgen.probe, fixed in the source.
4. For every unit (layer, kind h/c/i/f/g/o, index) and both signs, AUROC on A; the best
   (unit, sign) is scored on B: plain AUROC_B over all positions, and hard AUROC_B over
   positions inside whitespace-free runs of >= 8 characters only (URL characters against
   look-alikes: file names, e-mail addresses, long words); for the hard figure the unit
   is chosen by hard AUROC on A.
5. Controls: the same protocol on the untrained initial weights (same seed), and the
   run-length counter ("characters since the last whitespace") as a feature.
6. A sparse logistic probe over all h and c units, for comparison.
7. Causal checks (issue 18) on the URL unit chosen on A:
   - ablation: on the first --causal-chars characters of part B, the rise in loss on URL
     characters and on the others when the unit is set to 0 (and to its mean), against the
     same ablation of --random-units random units of its layer and kind
     (lmgen.probe.causal_effect);
   - clamping: --samples seeded samples of --sample-chars characters at T = --temperature
     from an empty prompt, with the unit clamped to its median over the URL characters of
     part A ("its typical inside-URL value") and without; the share of sampled characters
     inside URL_REGEX matches (the aim), and inside URL_LIKE_REGEX matches (a URL with or
     without its scheme: reported beside it, defined after reading clamped samples).

Aims (issue 6): plain AUROC_B >= 0.95; hard AUROC_B >= 0.92; hard AUROC_B above the
untrained control by >= 0.20 and above the run-length counter by >= 0.02. Aims (issue 18):
ablating the unit raises the loss on URL characters >= 3x its rise on other characters,
above the 95th percentile of the random ablations; clamping it makes the share of URL
characters in samples >= 5x the unclamped share.

    python benchmarks/url_neuron.py --steps 2000          # a few minutes on 2 CPU cores
    python benchmarks/url_neuron.py --steps 100 --max-chars 60000   # a smoke run
    python benchmarks/url_neuron.py --load RUN --no-probe           # a trained run folder: no training
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmgen import corpora
from lmgen.activations import intervene, regex_mask, trace
from lmgen.checkpoint import load_checkpoint
from lmgen.config import ModelConfig, TrainConfig
from lmgen.generation import GenerationConfig
from lmgen.model import RNNLM
from lmgen.probe import (
    URL_LIKE_REGEX,
    URL_REGEX,
    WIKILINK_REGEX,
    causal_effect,
    logistic_probe,
    long_runs,
    rank_units,
    run_length,
    score_feature,
)
from lmgen.sampling import generate
from lmgen.train import train

PREDICATES = {"url": URL_REGEX, "wikilink": WIKILINK_REGEX}
HARD_MIN_RUN = 8
AIMS = {"plain": 0.95, "hard": 0.92, "over_untrained": 0.20, "over_counter": 0.02,
        "ablation_ratio": 3.0, "ablation_percentile": 95.0, "clamp_ratio": 5.0}


def held_out_pages(corpus: corpora.Corpus, max_chars: int) -> tuple[str, int, int]:
    """Whole held-out pages joined by newlines, the character where half B starts, and the
    number of pages."""
    pages = []
    for split in ("valid", "test"):
        pages += re.findall(r"<page>.*?</page>", corpus.text(split), flags=re.S)
    if max_chars and sum(map(len, pages)) > max_chars:
        # Water-filling: cut every page to at most `cap` characters, the largest cap that
        # fits the budget, so that small pages stay whole and every page contributes.
        lengths = sorted(map(len, pages))
        cap, used = 0, 0
        for i, n in enumerate(lengths):
            remaining = len(lengths) - i
            if used + n * remaining > max_chars:
                cap = (max_chars - used) // remaining
                break
            used += n
        pages = [page[:cap] for page in pages]
    if len(pages) < 2:
        raise SystemExit("need at least two held-out pages")
    text = "\n".join(pages)
    starts = np.cumsum([0] + [len(p) + 1 for p in pages[:-1]])
    split_at = int(starts[np.argmin(np.abs(starts[1:] - len(text) / 2)) + 1])  # page boundary nearest half
    return text, split_at, len(pages)


def evaluate(model: RNNLM, tok, text: str, split_at: int, *, probe: bool) -> dict:
    tr = trace(model, tok, text, allow_unknown=True)
    hard_where = long_runs(text, HARD_MIN_RUN)
    results = {}
    for name, pattern in PREDICATES.items():
        mask = regex_mask(text, pattern)
        plain = rank_units(tr, mask, split_at=split_at)[0]
        hard = rank_units(tr, mask, where=hard_where, split_at=split_at)[0]
        run = run_length(text).astype(np.float64)
        row = {
            "plain": plain, "hard": hard,
            "counter_plain": score_feature(tr, run, mask, split_at=split_at),
            "counter_hard": score_feature(tr, run, mask, where=hard_where, split_at=split_at),
            "inside_fraction": float(mask.mean()),
        }  # fmt: skip
        if probe:
            row["probe"] = logistic_probe(tr, mask, kinds=("h", "c"), split_at=split_at, steps=200)
        u = plain.unit  # its typical value inside the predicate, on part A (where it was chosen)
        inside_a = tr.token_mask(mask) & (tr.spans[:, 0] < split_at)
        row["typical_inside"] = float(np.median(tr.unit(u.layer, u.kind, u.index)[inside_a]))
        results[name] = row
    return results


def url_share(texts: list[str], pattern: str = URL_REGEX) -> float:
    """The share of the characters of ``texts`` inside matches of ``pattern``."""
    inside = sum(m.end() - m.start() for t in texts for m in re.finditer(pattern, t))
    return inside / max(sum(map(len, texts)), 1)


def causal_checks(model, tok, text: str, split_at: int, unit, typical: float, args) -> list[tuple[str, bool]]:
    """Issue 18's two causal aims for ``unit``: ablation on part B, clamping while sampling."""
    t0 = time.perf_counter()
    part = text[split_at : split_at + args.causal_chars] if args.causal_chars else text[split_at:]
    effect = causal_effect(model, tok, part, unit, regex_mask(part, URL_REGEX), n_random=args.random_units,
                           seed=args.seed, rows=args.rows)
    print(f"\n== causal: ablating {unit} on {len(part):,} characters of part B ({time.perf_counter() - t0:.0f} s) ==")
    print(effect)
    t0 = time.perf_counter()
    config = GenerationConfig(temperature=args.temperature, max_new_tokens=args.sample_chars,
                              num_return_sequences=args.samples)
    shares = {}
    for label, spec in (("unclamped", {}), (f"{unit} clamped to {typical:+.3f}", {unit: typical})):
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.samples)]
        with intervene(model, spec):
            samples = generate(model, tok, "", config, generator=generators)
        texts = [s.text for s in samples]
        shares[label] = url_share(texts), url_share(texts, URL_LIKE_REGEX)
    print(f"\n== causal: clamping while sampling ({args.samples} samples x {args.sample_chars} characters, "
          f"T = {args.temperature}, {time.perf_counter() - t0:.0f} s) ==")
    print(f"  {'':32s} {'URL_REGEX':>10s} {'URL_LIKE_REGEX':>15s}  (share of sampled characters)")
    for label, (share, like) in shares.items():
        print(f"  {label:32s} {share:10.2%} {like:15.2%}")
    (base, base_like), (clamped, clamped_like) = shares.values()
    print(f"  ratio{'':27s} {clamped / max(base, 1e-12):9.1f}x {clamped_like / max(base_like, 1e-12):14.1f}x   "
          "(URL_LIKE_REGEX also counts URLs written without http:// or www.; no aim, see lmgen/probe.py)")
    clamp_ratio = clamped / base if base > 0 else (float("inf") if clamped > 0 else 0.0)
    checks = []
    for how, ins, out, ratio, pct in (
            ("set to 0", effect.zero_inside, effect.zero_outside, effect.ratio_zero, effect.percentile_zero),
            ("set to its mean", effect.mean_inside, effect.mean_outside, effect.ratio_mean, effect.percentile_mean)):
        checks += [(f"ablation ({how}): rise inside / outside >= 3 ({ratio:.1f}x: {ins:+.4f} vs {out:+.4f} "
                    "nats/char)", ratio >= AIMS["ablation_ratio"]),
                   (f"ablation ({how}): above the 95th percentile of {len(effect.null_units)} random {unit.kind} "
                    f"units (percentile {pct:.1f})", pct > AIMS["ablation_percentile"])]
    return checks + [(f"clamp: URL share >= 5x unclamped ({clamp_ratio:.1f}x: {clamped:.2%} vs {base:.2%})",
                      clamp_ratio >= AIMS["clamp_ratio"])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (fixed: not wall time)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-2,
                   help="peak learning rate (lmgen's default, tuned on tinyshakespeare)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max-chars", type=int, default=0, help="cap on held-out characters (0 = all pages)")
    p.add_argument("--no-probe", action="store_true", help="skip the logistic probe (faster)")
    p.add_argument("--load", default=None, metavar="RUN",
                   help="a trained run folder (its last/) instead of training; the training flags then only "
                        "describe it")
    p.add_argument("--no-causal", action="store_true", help="skip the causal checks (issue 18)")
    p.add_argument("--causal-chars", type=int, default=30_000,
                   help="characters of part B the ablations are scored on (0 = all of part B)")
    p.add_argument("--random-units", type=int, default=100, help="random same-kind units ablated for the null")
    p.add_argument("--rows", type=int, default=128, help="ablations read side by side in one batch")
    p.add_argument("--samples", type=int, default=50, help="seeded samples, clamped and not")
    p.add_argument("--sample-chars", type=int, default=500, help="characters per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = corpora.resolve("enwiki-xml-sample")
    text, split_at, num_pages = held_out_pages(corpus, args.max_chars)
    print(f"held-out: {num_pages} whole pages, {len(text):,} chars; A = [0, {split_at:,}), B = [{split_at:,}, "
          f"{len(text):,}); predicates fixed: url={URL_REGEX!r} wikilink={WIKILINK_REGEX!r}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        model_cfg = ModelConfig(cell="lstm", embed=32, hidden=args.hidden, layers=args.layers)
        cfg = TrainConfig(corpus="enwiki-xml-sample", steps=args.steps, batch=args.batch, bptt=args.bptt,
                          lr=args.lr, warmup=min(100, args.steps // 10), eval_every=max(args.steps, 1),
                          eval_tokens=50_000, seed=args.seed, progress=False, out=str(out), device="cpu")
        t0 = time.perf_counter()
        if args.load is None:
            result = train(cfg, model_cfg, overwrite=True, log=lambda msg: None)
            print(f"trained {result.steps} steps ({result.tokens:,} tokens) in {time.perf_counter() - t0:.0f} s; "
                  f"validation loss {result.val_loss:.3f} nats/char ({result.val_loss / np.log(2):.3f} bits/char)")
        ckpt = load_checkpoint(Path(args.load) / "last" if args.load else out / "last")
        trained, tok = ckpt.model, ckpt.tokenizer
        if args.load is not None:
            model_cfg = ModelConfig(**{**trained.config.__dict__, "vocab_size": 0})
            print(f"loaded {ckpt.folder}: {model_cfg.cell} {model_cfg.layers}x{model_cfg.hidden}")
        torch.manual_seed(args.seed)  # the initial weights train() started from (same seed, same init)
        untrained = RNNLM(ModelConfig(**{**model_cfg.__dict__, "vocab_size": tok.vocab_size}))
        t0 = time.perf_counter()
        res_t = evaluate(trained, tok, text, split_at, probe=not args.no_probe)
        res_u = evaluate(untrained, tok, text, split_at, probe=False)
        print(f"traced and ranked in {time.perf_counter() - t0:.0f} s")
        url = res_t["url"]["plain"]
        causal = [] if args.no_causal else causal_checks(trained, tok, text, split_at, url.unit,
                                                         res_t["url"]["typical_inside"], args)

    ok_all = True
    for name in PREDICATES:
        t, u = res_t[name], res_u[name]
        print(f"\n== inside {name} ({t['inside_fraction']:.1%} of held-out characters) ==")
        print(f"{'':28s}{'unit (chosen on A)':24s}{'AUROC_A':>9s}{'AUROC_B':>9s}")
        rows = [("trained, plain", t["plain"]), ("trained, hard", t["hard"]),
                ("untrained, plain", u["plain"]), ("untrained, hard", u["hard"]),
                ("run-length counter, plain", t["counter_plain"]), ("run-length counter, hard", t["counter_hard"])]
        for label, s in rows:
            unit = "counter" if s.unit.layer < 0 else f"{s.unit}{'+' if s.sign > 0 else '-'}"
            print(f"{label:28s}{unit:24s}{s.auroc_a:9.3f}{s.auroc_b:9.3f}")
        if "probe" in t:
            print(f"{'L1 probe over h, c':28s}{str(t['probe'].nonzero) + ' units':24s}"
                  f"{t['probe'].auroc_a:9.3f}{t['probe'].auroc_b:9.3f}")
        checks = [
            ("plain AUROC_B >= 0.95", t["plain"].auroc_b >= AIMS["plain"]),
            ("hard AUROC_B >= 0.92", t["hard"].auroc_b >= AIMS["hard"]),
            (f"hard - untrained hard >= 0.20 ({t['hard'].auroc_b - u['hard'].auroc_b:+.3f})",
             t["hard"].auroc_b - u["hard"].auroc_b >= AIMS["over_untrained"]),
            (f"hard - counter hard >= 0.02 ({t['hard'].auroc_b - t['counter_hard'].auroc_b:+.3f})",
             t["hard"].auroc_b - t["counter_hard"].auroc_b >= AIMS["over_counter"]),
        ]
        if name == "url":
            checks += causal
        for label, ok in checks:
            ok_all &= ok
            print(f"  [{'met' if ok else 'NOT met'}] {label}")
    print(f"\nsettings: --steps {args.steps} --hidden {args.hidden} --layers {args.layers} --batch {args.batch} "
          f"--bptt {args.bptt} --lr {args.lr} --seed {args.seed} --max-chars {args.max_chars}"
          + ("" if args.no_causal else f" --causal-chars {args.causal_chars} --random-units {args.random_units} "
                                       f"--samples {args.samples} --sample-chars {args.sample_chars} "
                                       f"--temperature {args.temperature}")
          + (f" --load {args.load}" if args.load else ""))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
