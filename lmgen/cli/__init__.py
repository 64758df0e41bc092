"""``lmgen``: the command line. Parsing only; the work is done by the library modules.

Errors caused by the user (``LmgenError``) print one line and exit 1; usage errors exit
2 (argparse); Ctrl-C exits 130.

One module per command family, each with its ``cmd_X(args)`` and ``add_X_parser(sub)``:
``train.py``; ``generate.py`` (sample, repl); ``evaluate.py`` (eval); ``look.py`` (plot,
viz); ``corpus.py`` (with ``tables.py``, what it prints); ``copycheck.py`` (copycheck, and the
--max-copy / --check-copy flags of sample and repl); ``flags.py``, the flags several
commands share. Heavy modules (torch, matplotlib) are imported inside the ``cmd_X``
functions, so that ``lmgen --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import LmgenError
from ..version import __version__
from .atlas import add_atlas_parser
from .copycheck import add_copycheck_parser
from .corpus import add_corpus_parser
from .evaluate import add_eval_parser
from .generate import add_repl_parser, add_sample_parser
from .look import add_plot_parser, add_viz_parser
from .train import _MODEL_FIELDS, _TRAIN_FIELDS, add_train_parser

__all__ = ["build_parser", "main", "_MODEL_FIELDS", "_TRAIN_FIELDS"]  # the field lists: for tests/test_cli.py

# A new command: its module adds `def cmd_X(args)` and `def add_X_parser(sub)`, and
# build_parser below one call.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmgen",
        description="Train, evaluate and sample character-, word- and SentencePiece-level RNN language models.",
        epilog="Run `lmgen COMMAND --help` for the flags of one command.",
    )
    parser.add_argument("--version", action="version", version=f"lmgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    add_corpus_parser(sub)
    add_train_parser(sub)
    add_sample_parser(sub)
    add_eval_parser(sub)
    add_plot_parser(sub)
    add_viz_parser(sub)
    add_repl_parser(sub)
    add_copycheck_parser(sub)
    add_atlas_parser(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, but an unknown command or flag gets a "did you mean" (``lmgen trian``, ``--hiden``)."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    words = list(sys.argv[1:] if argv is None else argv)
    if words and not words[0].startswith("-") and words[0] not in sub.choices:
        close = difflib.get_close_matches(words[0], list(sub.choices), n=1)
        parser.error(f"unknown command {words[0]!r}" + (f" (did you mean {close[0]}?)" if close else "")
                     + f"; choose from {', '.join(sub.choices)}")
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = sub.choices[args.command]
        known = [o for action in command._actions for o in action.option_strings]
        hints = []
        for extra in extras:
            close = difflib.get_close_matches(extra.split("=")[0], known, n=1) if extra.startswith("-") else []
            hints.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
        command.error("unrecognized arguments: " + " ".join(hints))
    return args


_NEEDS = {"sample": ("stdout",), "eval": ("stdout",), "corpus": ("stdout",), "repl": ("stdin", "stdout"),
          "copycheck": ("stdout",), "atlas": ("stdout",)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command in _NEEDS or args.command == "train":
        # Before torch loads: the OpenMP wait policy is read once, then (see lmgen/cores.py).
        from ..cores import apply, prepare

        try:
            choice = prepare(getattr(args, "threads", "auto"))
        except LmgenError as exc:
            print(f"lmgen: error: {exc}", file=sys.stderr)
            return 1
        if args.command != "train":  # train() applies (and keeps following) its own choice
            apply(choice)
    # Started with a stream closed (`>&-`, `<&-`), Python sets it to None: one line, not a traceback.
    for name in _NEEDS.get(args.command, ()):
        stream = getattr(sys, name)
        if stream is None or stream.closed:
            print(f"lmgen: error: standard {'input' if name == 'stdin' else 'output'} is closed; "
                  f"lmgen {args.command} needs it", file=sys.stderr)
            return 1
    try:
        return args.func(args)
    except LmgenError as exc:
        print(f"lmgen: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlmgen: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        # Out of memory (CPU allocator, CUDA OOM): a sizing problem the user can fix, not a bug.
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc) and "out of memory" not in str(exc):
            raise
        # An empty MemoryError has no message: this handler must never raise itself.
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        print(f"lmgen: error: out of memory: {detail}; lower --batch, --bptt, --hidden, --embed or --layers",
              file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `lmgen sample ... | head`
        return 0
    except OSError as exc:
        # The file system refused (a full disk, a cache folder under a file, no permission):
        # the user's environment, not a bug, so one line naming the path.
        from ..cache import CACHE_ENV, cache_folder

        where = f"{exc.filename}: " if exc.filename else ""
        hint = (f" (under the cache folder: set ${CACHE_ENV} to a writable folder)"
                if exc.filename and str(exc.filename).startswith(str(cache_folder())) else "")
        print(f"lmgen: error: {where}{exc.strerror or exc}{hint}", file=sys.stderr)
        return 1
