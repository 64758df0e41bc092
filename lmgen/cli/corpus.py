"""``lmgen corpus list|fetch|info`` (the tables it prints: :mod:`lmgen.cli.tables`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .flags import Formatter


def cmd_corpus(args: argparse.Namespace) -> int:
    from .. import corpora
    from . import tables

    if args.action == "list":
        print(tables.format_corpus_table())
    elif args.action == "fetch":
        if not args.name:
            raise ConfigError("lmgen corpus fetch needs a corpus NAME; see `lmgen corpus list`")
        path = corpora.fetch(args.name, dest=Path(args.dest) if args.dest else None, mirror=args.mirror)
        print(f"{args.name}: ready in {path}")
    elif args.action == "info":
        corpus = corpora.resolve(args.name, mirror=args.mirror, separator=args.separator,
                                 valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
                                 split_seed=args.split_seed)
        print(tables.format_info(corpus))
    return 0


def add_corpus_parser(sub: Any) -> None:
    p = sub.add_parser("corpus", help="list, fetch or describe corpora", formatter_class=Formatter,
                       description="Named corpora come from the mirror folder ($LMGEN_CORPORA), the cache "
                                   "($LMGEN_CACHE) or a download; any text file or folder is a corpus too.")
    p.add_argument("action", choices=["list", "fetch", "info"], help="what to do")
    p.add_argument("name", nargs="?", help="corpus name, or (for info) a text file or folder")
    p.add_argument("--mirror", help="a local folder laid out like the corpus mirror", default=None)
    p.add_argument("--dest", help="fetch: where to put the files (default: the cache folder)", default=None)
    g = p.add_argument_group("info on your own text file or folder: read as `lmgen train` would (docs/corpora.md)")
    g.add_argument("--separator", default="none", metavar="none|line|blank|REGEX",
                   help="what ends a document: none (each file is one), line, blank (blank lines) or a regular "
                        "expression; whole documents then go to the splits")
    g.add_argument("--valid-fraction", type=float, default=None, metavar="F",
                   help="share held out for validation (default 0.05)")
    g.add_argument("--test-fraction", type=float, default=None, metavar="F", help="share held out for testing "
                   "(default 0.05)")
    g.add_argument("--split-seed", type=int, default=0, metavar="N", help="seed of the draw of documents to splits")
    p.set_defaults(func=cmd_corpus)
