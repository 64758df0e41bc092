"""``lmgen train``: one flag per ModelConfig and TrainConfig field, then :func:`lmgen.train.train`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from ..config import ModelConfig, TrainConfig, flag, from_dict, parse_sizes, read_recipe, split_settings
from ..errors import ConfigError

# Flags whose long name differs from the field (none today); kept for clarity in one place.
_MODEL_FIELDS = [f for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
_TRAIN_FIELDS = [f for f in dataclasses.fields(TrainConfig)]


def _add_dataclass_flags(group: argparse._ArgumentGroup, fields: list, defaults: Any) -> None:
    """One flag per config field; default SUPPRESS so we can tell what the user typed."""
    for f in fields:
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "") + f" (default: {default!r})"
        if f.type in ("bool", bool):
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str, "int | list[int]": _sizes}.get(str(f.type), str)
            group.add_argument(flag(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS,
                               metavar=f.name.upper(), help=help_text)


def _sizes(text: str) -> int | list[int]:
    """``--hidden 256`` -> 256, ``--hidden 1150,1150,400`` -> [1150, 1150, 400] (one size per layer)."""
    try:
        return parse_sizes(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--hidden ")) from None


def cmd_train(args: argparse.Namespace) -> int:
    from ..distributed import fault_injector_from_env
    from ..finetune import finetune_settings
    from ..runs import resume_settings
    from ..train import train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    overwrite = bool(given.pop("overwrite", False))
    settings = read_recipe(args.config) if args.config else {}
    settings.update(given)  # the command line wins over the file
    model_given, train_given = split_settings(settings)
    if train_given.get("resume"):
        cfg, model_cfg = resume_settings(train_given.get("out", TrainConfig.out), model_given, train_given)
    elif train_given.get("init_from"):  # fine-tuning: the parent's model and optimiser settings, --lr / 2
        cfg, model_cfg = finetune_settings(model_given, train_given)
    else:
        cfg = from_dict(TrainConfig, train_given)
        model_cfg = from_dict(ModelConfig, model_given)
    # on_step: normally None; the distributed tests' $LMGEN_TEST_FAULT reaches the ranks torchrun starts this way.
    result = train(cfg, model_cfg, overwrite=overwrite, on_step=fault_injector_from_env())
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    best = f" (best {result.best_val_loss:.4f})" if result.best_val_loss is not None else ""
    if os.environ.get("RANK", "0") == "0":  # under torchrun (issue 8), rank 0 speaks for the job
        print(f"trained {result.steps} steps, {result.tokens:,} tokens in {result.train_seconds:.1f} s{val}{best}; "
              f"stopped by {result.stopped_by}; checkpoints in {result.out}", file=sys.stderr)
    return 130 if result.stopped_by == "interrupted" else 0


def add_train_parser(sub: Any) -> None:
    """``lmgen train``: one flag per ModelConfig and TrainConfig field, plus --config and --overwrite."""
    p = sub.add_parser(
        "train", help="train a language model", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="lmgen train [--corpus NAME|PATH] [--cell lstm|gru|rnn] [--steps N | --epochs N | --time 10m] "
              "[--out DIR] [--resume [--finetune] | --init-from CKPT] [options]",
        description="Train an RNN / GRU / LSTM language model with truncated BPTT.\n\n"
                    "Settings come from the defaults below, then --config FILE.toml (same names, with dashes "
                    "or underscores, optionally under [model] and [train]), then the command line.",
        epilog="example:\n  lmgen train --corpus tinyshakespeare --time 5m --out checkpoints/shakespeare\n"
               "  lmgen train --resume --out checkpoints/shakespeare --steps 5000\n"
               "  lmgen train --init-from checkpoints/shakespeare --corpus mine.txt --extend-vocab --time 2m "
               "--out checkpoints/mine\n"
               "  lmgen train --resume --finetune --out checkpoints/ptb --steps 60000  # AWD-LSTM's ASGD pass\n"
               "\nfine-tuning (--init-from, --resume --finetune): see docs/finetune.md",
    )
    p.add_argument("--config", metavar="FILE.toml", default=None, help="read settings from a TOML file")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                   help="replace the run already in --out instead of refusing (default: False)")
    _add_dataclass_flags(p.add_argument_group("model"), _MODEL_FIELDS, ModelConfig())
    _add_dataclass_flags(p.add_argument_group("training"), _TRAIN_FIELDS, TrainConfig())
    p.set_defaults(func=cmd_train)
