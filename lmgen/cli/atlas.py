"""``lmgen atlas``: every built-in predicate, its best unit and the controls, on one HTML
page (:mod:`lmgen.atlas`, predicates in :mod:`lmgen.predicates`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .flags import Formatter, add_threads_flag
from .look import _output_file


def split_point(value: str | None, text: str) -> int | None:
    """``--split-at``: a fraction 0 < F < 1 of the characters (moved on to the next line
    start, so that no line is cut in two), or a character index >= 1; None = half the tokens."""
    if value is None:
        return None
    try:
        f = float(value)
    except ValueError:
        raise ConfigError(f"--split-at must be a fraction in (0, 1) or a character index, got {value!r}") from None
    if 0 < f < 1:
        at = int(f * len(text))
        newline = text.find("\n", at)
        return newline + 1 if 0 <= newline < len(text) - 1 else max(at, 1)
    if f >= 1 and f == int(f):
        if f >= len(text):
            raise ConfigError(f"--split-at {value} is past the end of the text ({len(text):,} characters)")
        return int(f)
    raise ConfigError(f"--split-at must be a fraction in (0, 1) or a character index, got {value!r}")


def cmd_atlas(args: argparse.Namespace) -> int:
    from ..predicates import LIBRARY, select

    if args.list:
        for p in LIBRARY:
            hard = f" [hard: {p.hard_doc}]" if p.hard is not None else ""
            print(f"{p.name:20s} {p.doc}{hard}")
        return 0
    if args.checkpoint is None or args.text is None:
        raise ConfigError("give a checkpoint and --text FILE (or --list to see the predicates)")
    predicates = select(args.predicates) if args.predicates else None  # a typo fails before the slow part
    out = _output_file(args.out, "atlas.html")
    try:
        text = Path(args.text).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"--text {args.text}: cannot read it ({exc.strerror})") from None
    if args.snippets < 0:
        raise ConfigError(f"--snippets must be >= 0, got {args.snippets}")
    if args.max_chars < 0:
        raise ConfigError(f"--max-chars must be >= 0 (0 = all), got {args.max_chars}")
    if args.max_chars and len(text) > args.max_chars:
        text = text[: args.max_chars]
    if len(text) < 2:
        raise ConfigError(f"--text {args.text} has {len(text)} characters; the atlas needs two parts of text")
    split_at = split_point(args.split_at, text)

    from ..atlas import build
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    seed = args.seed if args.seed is not None else int(ckpt.config.get("train", {}).get("seed", 0))
    atlas = build(ckpt.model, ckpt.tokenizer, text, predicates=predicates, split_at=split_at,
                  kinds=args.kinds.split(",") if args.kinds else None, untrained=not args.no_untrained,
                  seed=seed, dtype="float16" if args.float16 else "float32", top_k=args.top_k,
                  snippets=args.snippets, allow_unknown=args.allow_unknown, probe=args.probe,
                  log=lambda msg: print(msg, file=sys.stderr))
    print(atlas.table())
    atlas.save(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_atlas_parser(sub: Any) -> None:
    p = sub.add_parser(
        "atlas", help="which unit tracks which feature: a table of predicates, units and controls (HTML)",
        formatter_class=Formatter,
        description="For every predicate of a built-in library (inside a URL, a string literal, a comment, "
                    "parentheses, ...: --list shows them), choose the unit with the best AUROC on part A of the "
                    "text and report its AUROC on part B, with the untrained model and trivial features "
                    "(column, run length, bracket counters, ...) as controls; rows sorted by the gain over the "
                    "best control. Writes one standalone HTML page with coloured snippets and histograms.",
        epilog="example:\n  lmgen atlas checkpoints/quickstart --text held_out.py --out atlas.html")
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint folder or run folder (its best/ is used)")
    p.add_argument("--text", default=None, help="UTF-8 text file to run the model over (held-out text)")
    p.add_argument("--split-at", default=None, metavar="F",
                   help="where part B starts: a fraction of the characters (0.5) or a character index "
                        "(default: half of the tokens)")
    p.add_argument("--out", default="atlas.html", help="HTML file to write")
    p.add_argument("--predicates", default=None, help="only these predicates, comma-separated (default: all)")
    p.add_argument("--kinds", default=None, help="only rank these activation kinds, comma-separated (default: all)")
    p.add_argument("--max-chars", type=int, default=200_000,
                   help="use only the first N characters of the text (0 = all)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the untrained control's weights (default: the checkpoint's training seed)")
    p.add_argument("--no-untrained", action="store_true", help="skip the untrained-model control (faster)")
    p.add_argument("--probe", action="store_true",
                   help="also fit a sparse logistic probe over all h and c units per predicate (on A, AUROC on B): "
                        "is a predicate no single unit tracks spread over many? (~4 s a predicate for 200k characters)")
    p.add_argument("--float16", action="store_true", help="store activations in float16 (half the memory)")
    p.add_argument("--top-k", type=int, default=3, help="next-token guesses shown under each snippet position")
    p.add_argument("--snippets", type=int, default=2, help="coloured snippets per predicate on the page")
    p.add_argument("--allow-unknown", action="store_true", help="read symbols outside the vocabulary as <unk>")
    p.add_argument("--list", action="store_true", help="list the predicates and exit")
    add_threads_flag(p)
    p.set_defaults(func=cmd_atlas)
