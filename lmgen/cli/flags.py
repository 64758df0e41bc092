"""Flags and help shared by several commands: the help formatter, --threads, and the
continuous-cache / dynamic-evaluation flags of eval, sample and repl."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, unless its help text already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default="auto", metavar="N|auto",
                   help="CPU threads: auto = the cores other processes leave free (lmgen/cores.py), "
                        "or a number (default auto)")


def add_adaptive_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The continuous cache and dynamic evaluation (lmgen/adaptive/), for eval, sample and repl."""
    g = p.add_argument_group("adapting to the text: continuous cache (Grave et al. 2017), dynamic evaluation "
                             "(Krause et al. 2018); see docs/adaptive.md")
    g.add_argument("--cache", type=int, default=None, metavar="N",
                   help="mix in a cache of the last N (hidden state, next token) pairs, e.g. 500 (default: off)")
    g.add_argument("--cache-theta", type=float, default=None, metavar="THETA",
                   help="cache: sharpness of the state similarity (default 0.3)")
    g.add_argument("--cache-lambda", type=float, default=None, metavar="LAMBDA",
                   help="cache: its weight in the mixture, in [0, 1] (default 0.1)")
    if command == "eval":
        g.add_argument("--dynamic", action="store_true",
                       help="dynamic evaluation: score each segment, then take a gradient step on it "
                            "(on a copy of the weights; default: off)")
    else:
        what = "the prompt before sampling" if command == "sample" else "the text you type (:adapt on)"
        g.add_argument("--adapt", action="store_true", help=f"take dynamic-evaluation steps on {what} (default: off)")
    g.add_argument("--dyn-lr", type=float, default=None, metavar="ETA", help="dynamic: learning rate (default 1e-4)")
    g.add_argument("--dyn-decay", type=float, default=None, metavar="LAMBDA",
                   help="dynamic: pull towards the trained weights per step (default 0.02)")
    g.add_argument("--dyn-segment", type=int, default=None, metavar="T",
                   help="dynamic: tokens scored, then learned, at a time (default 20)")
    g.add_argument("--dyn-stats-tokens", type=int, default=None, metavar="N",
                   help="dynamic: training tokens for the gradient statistics MS_g (default 100000)")
    if command == "eval":
        g.add_argument("--tune-on", default=None, metavar="SPLIT",
                       help="choose the values not given (theta, lambda, lr, decay) by a grid on SPLIT "
                            "(valid) of the training corpus, before the evaluated split is read (default: "
                            "the values as given)")
        g.add_argument("--tune-tokens", type=int, default=0, metavar="N",
                       help="tune on the first N tokens of that split only (default 0: all)")


def adaptive_configs(args: argparse.Namespace, dynamic_on: bool) -> tuple[Any, Any, list[str]]:
    """(CacheConfig or None, DynamicConfig or None, the tunable values given explicitly) from the flags."""
    from ..adaptive import CacheConfig, DynamicConfig

    cache_values = {"theta": args.cache_theta, "lam": args.cache_lambda}
    if args.cache is None and any(v is not None for v in cache_values.values()):
        raise ConfigError("--cache-theta and --cache-lambda set the cache: add --cache N")
    dyn_values = {"lr": args.dyn_lr, "decay": args.dyn_decay, "segment": args.dyn_segment,
                  "stats_tokens": args.dyn_stats_tokens}
    if not dynamic_on and any(v is not None for v in dyn_values.values()):
        switch = "--dynamic" if "dynamic" in args else "--adapt"
        raise ConfigError(f"the --dyn-* flags set dynamic evaluation: add {switch}")
    cache = None
    if args.cache is not None:
        cache = CacheConfig(args.cache, **{k: v for k, v in cache_values.items() if v is not None})
    dynamic = DynamicConfig(**{k: v for k, v in dyn_values.items() if v is not None}) if dynamic_on else None
    given = [name for name, v in (("theta", args.cache_theta), ("lambda", args.cache_lambda), ("lr", args.dyn_lr),
                                  ("decay", args.dyn_decay)) if v is not None]
    return cache, dynamic, given
