"""Looking at runs and models: ``lmgen plot`` (training curves, :mod:`lmgen.plot`) and
``lmgen viz`` (one unit's activation over a text, :mod:`lmgen.viz`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .flags import Formatter


def _output_file(path: str, example: str) -> Path:
    """``--out FILE`` checked before the work: not a folder, and its folder created when missing."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name in it, e.g. {out / example}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot create its folder ({exc.strerror or exc})") from None
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    from ..plot import plot_runs

    _output_file(args.out, "curves.png")
    plot_runs(args.runs, labels=args.label, out=args.out, title=args.title)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_plot_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plot", help="training curves of one or more runs", formatter_class=Formatter,
        description="Training and validation loss and perplexity against steps and training time, "
                    "from each run folder's metrics.jsonl; several runs share one figure.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (lmgen train --out)")
    p.add_argument("--out", default="curves.png", help="image file to write (.png, .svg, .pdf)")
    p.add_argument("--label", action="append", help="a label per run, in order (default: folder names)")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=cmd_plot)


def cmd_viz(args: argparse.Namespace) -> int:
    from ..activations import regex_mask, trace
    from ..checkpoint import load_checkpoint
    from ..probe import rank_units
    from ..viz import show

    if args.find is None and (args.layer is None or args.unit is None):
        raise ConfigError("give --find REGEX, or both --layer L and --unit U")
    _output_file(args.out, "page.html")
    try:
        text = Path(args.text).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"--text {args.text}: cannot read it ({exc.strerror})") from None
    if args.max_chars and len(text) > args.max_chars:
        text = text[: args.max_chars]
    ckpt = load_checkpoint(args.checkpoint)
    tr = trace(ckpt.model, ckpt.tokenizer, text, top_k=max(args.top_k, 1), allow_unknown=args.allow_unknown)
    if args.find is not None:
        ranking = rank_units(tr, regex_mask(text, args.find), kinds=args.kinds.split(",") if args.kinds else None)
        best = ranking[0]
        print("best units for /" + args.find + "/ (chosen on the first half, AUROC on the second):", file=sys.stderr)
        for score in ranking[:10]:
            print(f"  {score}", file=sys.stderr)
        unit, sign = best.unit, best.sign
        note = (f"best unit for /{args.find}/: sign {'+' if sign > 0 else '-'}, "
                f"AUROC first half {best.auroc_a:.3f}, second half {best.auroc_b:.3f}")
    else:
        unit, sign, note = tr.check_unit(args.layer, args.kind, args.unit), 1, ""
    view = show(tr, unit.layer, unit.kind, unit.index, sign=sign, top_k=args.top_k, note=note)
    view.save(args.out)
    print(f"wrote {args.out} ({unit}, {len(tr)} tokens)", file=sys.stderr)
    return 0


def add_viz_parser(sub: Any) -> None:
    p = sub.add_parser("viz", help="colour a text by one unit's activation (HTML page)", formatter_class=Formatter,
                       description="Write a standalone HTML page: the text coloured by one unit (layers and units "
                                   "count from 0), with the model's top-k next-token guesses under each position. "
                                   "--find REGEX picks the unit that best separates the regex's matches.",
                       epilog="example:\n"
                              "  lmgen viz checkpoints/enwiki --text page.xml --find 'https?://\\S+' --out url.html")
    p.add_argument("checkpoint", help="checkpoint folder or run folder (its best/ is used)")
    p.add_argument("--text", required=True, help="UTF-8 text file to run the model over")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--find", metavar="REGEX", default=None,
                       help="rank all units for 'inside a match' and show the best")
    which.add_argument("--layer", type=int, default=None, help="layer of the unit to show (0-based)")
    p.add_argument("--unit", type=int, default=None, help="index of the unit to show (0-based)")
    p.add_argument("--kind", default="c",
                   help="activation kind: h, c, i, f, g, o (LSTM); h, r, z, n (GRU); h (RNN)")
    p.add_argument("--kinds", default=None, help="--find: only rank these kinds, comma-separated (default: all)")
    p.add_argument("--top-k", type=int, default=5, help="next-token guesses shown under each position")
    p.add_argument("--max-chars", type=int, default=20000, help="use only the first N characters of the text (0 = all)")
    p.add_argument("--allow-unknown", action="store_true", help="read symbols outside the vocabulary as <unk>")
    p.add_argument("--out", default="viz.html", help="HTML file to write")
    p.set_defaults(func=cmd_viz)
