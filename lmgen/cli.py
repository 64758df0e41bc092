"""``lmgen``: the command line. Parsing only; the work is done by the library modules.

Errors caused by the user (``LmgenError``) print one line and exit 1; usage errors exit
2 (argparse); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import ModelConfig, TrainConfig, flag, from_dict
from .errors import ConfigError, LmgenError

# Flags whose long name differs from the field (none today); kept for clarity in one place.
_MODEL_FIELDS = [f for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
_TRAIN_FIELDS = [f for f in dataclasses.fields(TrainConfig)]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _add_dataclass_flags(group: argparse._ArgumentGroup, fields: list, defaults: Any) -> None:
    """One flag per config field; default SUPPRESS so we can tell what the user typed."""
    for f in fields:
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "") + f" (default: {default!r})"
        if f.type in ("bool", bool):
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            group.add_argument(flag(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS,
                               metavar=f.name.upper(), help=help_text)


def _read_toml(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("model", "train"):
            flat.update(value)
        else:
            flat[key] = value
    return {k.replace("-", "_"): v for k, v in flat.items()}


def _split_settings(settings: dict[str, Any]) -> tuple[dict, dict]:
    model_names = {f.name for f in _MODEL_FIELDS}
    train_names = {f.name for f in _TRAIN_FIELDS}
    unknown = sorted(set(settings) - model_names - train_names - {"overwrite"})
    if unknown:
        raise ConfigError("unknown setting(s): " + ", ".join(flag(u) for u in unknown) + "; see `lmgen train --help`")
    model = {k: v for k, v in settings.items() if k in model_names}
    train = {k: v for k, v in settings.items() if k in train_names}
    return model, train


def cmd_train(args: argparse.Namespace) -> int:
    from .train import saved_config, train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    overwrite = bool(given.pop("overwrite", False))
    settings = _read_toml(args.config) if args.config else {}
    settings.update(given)  # the command line wins over the file
    model_given, train_given = _split_settings(settings)
    if train_given.get("resume"):
        out = train_given.get("out", TrainConfig.out)
        saved = saved_config(out)
        for name, value in model_given.items():
            if saved["model"].get(name) != value:
                raise ConfigError(f"{flag(name)} cannot change when resuming (the run has {saved['model'].get(name)!r})")
        base = dict(saved.get("train") or {})
        base.update(train_given)
        cfg = from_dict(TrainConfig, base)
        model_cfg = from_dict(ModelConfig, saved["model"])
    else:
        cfg = from_dict(TrainConfig, train_given)
        model_cfg = from_dict(ModelConfig, model_given)
    result = train(cfg, model_cfg, overwrite=overwrite)
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    best = f" (best {result.best_val_loss:.4f})" if result.best_val_loss is not None else ""
    print(f"trained {result.steps} steps, {result.tokens:,} tokens in {result.train_seconds:.1f} s{val}{best}; "
          f"stopped by {result.stopped_by}; checkpoints in {result.out}", file=sys.stderr)
    return 130 if result.stopped_by == "interrupted" else 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .sampling import check_temperature, sample_ids, stream_text

    check_temperature(args.temperature)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    ckpt = load_checkpoint(args.checkpoint)
    tokenizer = ckpt.tokenizer
    unknown = tokenizer.unknown_symbols(args.prompt)
    if unknown:
        print(f"note: the vocabulary lacks {', '.join(map(repr, unknown))} in the prompt; they become <unk>",
              file=sys.stderr)
    generator = torch.Generator().manual_seed(args.seed)
    for n in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {n + 1} ---")
        sys.stdout.write(args.prompt)
        ids = sample_ids(ckpt.model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, generator=generator)
        for piece in stream_text(tokenizer, ids):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from . import corpora

    if args.action == "list":
        print(corpora.format_corpus_table())
    elif args.action == "fetch":
        if not args.name:
            raise ConfigError("lmgen corpus fetch needs a corpus NAME; see `lmgen corpus list`")
        path = corpora.fetch(args.name, dest=Path(args.dest) if args.dest else None, mirror=args.mirror)
        print(f"{args.name}: ready in {path}")
    elif args.action == "info":
        corpus = corpora.resolve(args.name, mirror=args.mirror)
        print(corpora.format_info(corpus))
    return 0


# --- eval (issue 4: lmgen/evaluate.py) --------------------------------------------------
# --- plot (issue 4: lmgen/plot.py) ------------------------------------------------------
# --- repl (issue 5: lmgen/repl.py) ------------------------------------------------------
# --- viz (issue 6: lmgen/viz.py) --------------------------------------------------------
# Each command adds `def cmd_X(args)` and `def add_X_parser(sub)` in its section above,
# and one call in build_parser below.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmgen",
        description="Train, evaluate and sample character-, word- and SentencePiece-level RNN language models.",
        epilog="Run `lmgen COMMAND --help` for the flags of one command.",
    )
    parser.add_argument("--version", action="version", version=f"lmgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("corpus", help="list, fetch or describe corpora", formatter_class=_Formatter,
                       description="Named corpora come from the mirror folder ($LMGEN_CORPORA), the cache "
                                   "($LMGEN_CACHE) or a download; any text file or folder is a corpus too.")
    p.add_argument("action", choices=["list", "fetch", "info"], help="what to do")
    p.add_argument("name", nargs="?", help="corpus name, or (for info) a text file or folder")
    p.add_argument("--mirror", help="a local folder laid out like the corpus mirror", default=None)
    p.add_argument("--dest", help="fetch: where to put the files (default: the cache folder)", default=None)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser(
        "train", help="train a language model", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an RNN / GRU / LSTM language model with truncated BPTT.\n\n"
                    "Settings come from the defaults below, then --config FILE.toml (same names, with dashes "
                    "or underscores, optionally under [model] and [train]), then the command line.",
        epilog="example:\n  lmgen train --corpus tinyshakespeare --time 5m --out checkpoints/shakespeare\n"
               "  lmgen train --resume --out checkpoints/shakespeare --steps 5000",
    )
    p.add_argument("--config", metavar="FILE.toml", default=None, help="read settings from a TOML file")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                   help="replace the run already in --out instead of refusing (default: False)")
    _add_dataclass_flags(p.add_argument_group("model"), _MODEL_FIELDS, ModelConfig())
    _add_dataclass_flags(p.add_argument_group("training"), _TRAIN_FIELDS, TrainConfig())
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a checkpoint", formatter_class=_Formatter,
                       description="Sample text until [END] or --max-new-tokens, printing it as it comes.")
    p.add_argument("checkpoint", help="checkpoint folder or run folder (its best/ is used)")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (> 0)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="stop after this many tokens")
    p.add_argument("--num-samples", type=int, default=1, help="how many samples")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same text)")
    p.set_defaults(func=cmd_sample)

    # add_eval_parser(sub); add_plot_parser(sub); add_repl_parser(sub); add_viz_parser(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, but an unknown flag gets a "did you mean" from the command's own flags."""
    import difflib

    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        known = [o for action in command._actions for o in action.option_strings]
        hints = []
        for extra in extras:
            close = difflib.get_close_matches(extra.split("=")[0], known, n=1) if extra.startswith("-") else []
            hints.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
        command.error("unrecognized arguments: " + " ".join(hints))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    try:
        return args.func(args)
    except LmgenError as exc:
        print(f"lmgen: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlmgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lmgen sample ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
