"""The continuous cache and dynamic evaluation on a trained checkpoint: figures and cost.

Prints the plain model, + cache, + dynamic evaluation and + both on the test split, with
theta, lambda, the learning rate and the decay chosen on the validation split only (the
test split is read after they are fixed), the time of each pass relative to plain
evaluation, and the aims of issue 15:

    Zaremba-small PTB (test 113.65):  cache <= 102, dynamic <= 100, both <= 95
    cost (CPU, PTB test):             cache <= 1.5x plain evaluation, dynamic <= 5x
    tinyshakespeare char default:     dynamic lowers the validation loss by >= 0.05 nats/char

    lmgen train --config configs/ptb-zaremba-small.toml     # ~45 CPU min, once
    python benchmarks/adaptive.py checkpoints/ptb-small
    python benchmarks/adaptive.py checkpoints/shakespeare --split valid --no-tune   # no test split: defaults

All passes are exact (one stream, --exact) unless --batch says otherwise. Run on a quiet
machine: the ratios are of wall times.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lmgen.adaptive import AdaptiveRequest, CacheConfig, DynamicConfig
from lmgen.evaluate import evaluate_checkpoint

PTB_AIMS = {"cache": 102.0, "dynamic": 100.0, "cache+dynamic": 95.0}
COST_AIMS = {"cache": 1.5, "dynamic": 5.0}
CHAR_GAIN = 0.05  # nats/char, dynamic evaluation on tinyshakespeare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint or run folder")
    parser.add_argument("--split", default="test", help="the split reported (default test)")
    parser.add_argument("--cache", type=int, default=500, metavar="N", help="cache size (default 500)")
    parser.add_argument("--dyn-segment", type=int, default=DynamicConfig.segment, metavar="T")
    parser.add_argument("--dyn-stats-tokens", type=int, default=DynamicConfig.stats_tokens, metavar="N")
    parser.add_argument("--no-tune", action="store_true", help="use the default values (no tuning on valid)")
    parser.add_argument("--tune-tokens", type=int, default=0, metavar="N", help="tune on the first N valid tokens")
    parser.add_argument("--batch", type=int, default=1, help="streams (default 1: exact)")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (smoke runs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    request = AdaptiveRequest(cache=CacheConfig(args.cache),
                              dynamic=DynamicConfig(segment=args.dyn_segment, stats_tokens=args.dyn_stats_tokens),
                              tune_on=None if args.no_tune else "valid", tune_tokens=args.tune_tokens)
    start = time.perf_counter()
    report = evaluate_checkpoint(args.checkpoint, split=args.split, batch=args.batch, exact=args.batch == 1,
                                 max_tokens=args.max_tokens, adaptive=request)
    total = time.perf_counter() - start
    print(report.format())
    print(f"\n{torch.get_num_threads()} thread(s); {total:.0f} s in all (gradient statistics, tuning and the passes)")
    print(f"{'method':<16}{'perplexity':>12}{'nats/token':>12}{'time':>10}{'x plain':>9}   aim")
    plain = report.results[0]
    corpus = plain.extra.get("corpus", "")
    for r in report.results:
        method = r.extra.get("method", "plain")
        ratio = r.seconds / max(plain.seconds, 1e-9)
        aims = []
        if corpus == "ptb" and method in PTB_AIMS:
            aims.append(f"ppl <= {PTB_AIMS[method]:g}: {'met' if r.perplexity <= PTB_AIMS[method] else 'NOT met'}")
        if method in COST_AIMS:
            aims.append(f"<= {COST_AIMS[method]:g}x: {'met' if ratio <= COST_AIMS[method] else 'NOT met'}")
        if method == "dynamic" and r.bits_per_char is not None and corpus != "ptb":
            gain = (plain.nll - r.nll) / r.chars
            aims.append(f"gain {gain:.4f} nats/char (aim >= {CHAR_GAIN} on tinyshakespeare)")
        print(f"{method:<16}{r.perplexity:>12.2f}{r.loss:>12.4f}{r.seconds:>9.1f}s{ratio:>8.2f}x   {'; '.join(aims)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)


if __name__ == "__main__":
    main()
