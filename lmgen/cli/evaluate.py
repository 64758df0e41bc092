"""``lmgen eval``: perplexity and bits per character of a checkpoint (:mod:`lmgen.report`)."""

from __future__ import annotations

import argparse
from typing import Any

from .flags import Formatter, adaptive_configs, add_adaptive_flags, add_threads_flag


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from ..adaptive import AdaptiveRequest
    from ..devices import resolve_device
    from ..report import evaluate_checkpoint

    cache, dynamic, given = adaptive_configs(args, args.dynamic)
    adaptive = AdaptiveRequest(cache, dynamic, args.tune_on, args.tune_tokens, given)
    report = evaluate_checkpoint(
        args.checkpoint, split=args.split, corpus=args.corpus, batch=args.batch, bptt=args.bptt,
        exact=args.exact, baselines=args.baseline or [], separator=args.separator,
        device=str(resolve_device(args.device)), max_tokens=args.max_tokens, adaptive=adaptive,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0


def add_eval_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="perplexity and bits per character of a checkpoint", formatter_class=Formatter,
        description="Cross-entropy (nats/token), perplexity, bits/token, bits/char (and bits/byte) over a "
                    "whole split or text file. Every token is a target, [END] included; the state is carried "
                    "through the text from the zero state and the first token is predicted after [END].\n\n"
                    "Batched mode (default) runs --batch streams side by side: every token is still scored, "
                    "but each stream after the first starts from the zero state mid-text, losing context for "
                    "its first tokens (a slightly pessimistic figure). --exact runs one stream.",
        epilog="examples:\n  lmgen eval checkpoints/ptb --split test --exact --baseline ngram:5\n"
               "  lmgen eval checkpoints/shakespeare --split notes.txt --json\n"
               "  lmgen eval checkpoints/ptb --exact --cache 500 --dynamic --tune-on valid")
    p.add_argument("checkpoint", help="checkpoint folder or run folder (its best/ is used)")
    p.add_argument("--split", default=None,
                   help="valid, test, train, or the path of a text file (default: test, else valid)")
    p.add_argument("--corpus", default=None, help="corpus NAME|PATH (default: the one the checkpoint was trained on)")
    p.add_argument("--batch", type=int, default=16, help="parallel streams in batched mode")
    p.add_argument("--bptt", type=int, default=256, help="tokens per forward call (memory, not the result)")
    p.add_argument("--exact", action="store_true", help="one stream: every token sees all previous ones")
    p.add_argument("--baseline", action="append", metavar="ngram:N",
                   help="also score an order-N Kneser-Ney n-gram LM fitted to the same training split "
                        "with the same tokenizer (repeatable)")
    p.add_argument("--separator", default=None, metavar="none|line|blank|file|REGEX",
                   help="for a text file: where documents ([END]) end, or a regular expression whose matches "
                        "end them (default: as the training corpus)")
    p.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0 = all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="where to run the model")
    add_threads_flag(p)
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    add_adaptive_flags(p, "eval")
    p.set_defaults(func=cmd_eval)
