"""``lmgen``: the command line. Parsing only; the work is done by the library modules.

Errors caused by the user (``LmgenError``) print one line and exit 1; usage errors exit
2 (argparse); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import MAX_SEED, ModelConfig, TrainConfig, flag, from_dict, read_recipe, split_settings
from .errors import ConfigError, LmgenError
from .version import __version__

# Flags whose long name differs from the field (none today); kept for clarity in one place.
_MODEL_FIELDS = [f for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
_TRAIN_FIELDS = [f for f in dataclasses.fields(TrainConfig)]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, unless its help text already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


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


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import fault_injector_from_env
    from .runs import resume_settings
    from .train import train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    overwrite = bool(given.pop("overwrite", False))
    settings = read_recipe(args.config) if args.config else {}
    settings.update(given)  # the command line wins over the file
    model_given, train_given = split_settings(settings)
    if train_given.get("resume"):
        cfg, model_cfg = resume_settings(train_given.get("out", TrainConfig.out), model_given, train_given)
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


def _seed(text: str) -> int:
    """An argparse type: a whole number that torch.Generator accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^63), got {text}")
    return value


def add_train_parser(sub: Any) -> None:
    """``lmgen train``: one flag per ModelConfig and TrainConfig field, plus --config and --overwrite."""
    p = sub.add_parser(
        "train", help="train a language model", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="lmgen train [--corpus NAME|PATH] [--cell lstm|gru|rnn] [--steps N | --epochs N | --time 10m] "
              "[--out DIR] [--resume] [options]",
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


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .devices import resolve_device
    from .sampling import generate, prime, stream_samples

    config = _generation_config(args)  # bad flags fail before the checkpoint loads
    cache, dynamic, _ = _adaptive_configs(args, args.adapt)
    if cache is not None and config.strategy == "beam":
        raise ConfigError("--cache works with greedy search and sampling, not with --beam")
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    model = ckpt.model
    if dynamic is not None and args.prompt:  # learn the prompt first: the sample leans towards it
        from .adaptive import live_adaptation

        live = live_adaptation(ckpt, dynamic)
        print(f"lmgen: --adapt: gradient statistics on up to {dynamic.stats_tokens:,} training tokens...",
              file=sys.stderr)
        live.switch(True)
        steps = live.learn(ckpt.tokenizer.encode(args.prompt), ckpt.tokenizer.end_id)
        model = live.model
        print(f"lmgen: adapted to the prompt: {steps} dynamic-evaluation steps (the checkpoint is unchanged)",
              file=sys.stderr)
    ctx = prime(model, ckpt.tokenizer, args.prompt, unknown="error" if args.strict_prompt else "replace", cache=cache)
    if ctx.unknown:
        print(f"lmgen: warning: the vocabulary lacks {', '.join(map(repr, ctx.unknown))} (in the prompt); "
              "they became <unk> (--strict-prompt refuses instead)", file=sys.stderr)
    generator = torch.Generator().manual_seed(args.seed)
    n = config.num_return_sequences
    out = sys.stdout
    if config.strategy == "beam":
        for rank, s in enumerate(generate(model, ckpt.tokenizer, ctx, config)):
            about = f"score {s.score:.4f}, normalised {s.normalized:.4f}, {len(s.ids)} tokens, " + (
                "ended by [END]" if s.stop == "end" else "cut at --max-new-tokens")
            if n > 1:
                out.write(f"--- beam {rank + 1} of {n}: {about} ---\n")
            else:
                print(f"lmgen: beam: {about}", file=sys.stderr)
            out.write(args.prompt + s.text + "\n")
        return 0
    shown = -1
    for index, piece in stream_samples(model, ckpt.tokenizer, ctx, config, generator=generator):
        while shown < index:  # the next sample starts (samples with no text included)
            shown += 1
            out.write(("\n" if shown else "") + (f"--- sample {shown + 1} of {n} ---\n" if n > 1 else "")
                      + args.prompt)
        out.write(piece)
        out.flush()
    while shown < n - 1:
        shown += 1
        out.write(("\n" if shown else "") + (f"--- sample {shown + 1} of {n} ---\n" if n > 1 else "") + args.prompt)
    out.write("\n")
    return 0


def _generation_config(args: argparse.Namespace) -> Any:
    from .sampling import config_from_flags

    return config_from_flags(
        greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, beam=args.beam,
        length_penalty=args.length_penalty, repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        num_samples=getattr(args, "num_samples", 1), precision=args.precision,
    )


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default="auto", metavar="N|auto",
                   help="CPU threads: auto = the cores other processes leave free (lmgen/cores.py), "
                        "or a number (default auto)")


def _add_generation_flags(p: argparse.ArgumentParser, samples: bool = True) -> None:
    """Decoding flags shared by `lmgen sample` and `lmgen repl` (defaults written out in
    the help: None means "not given", so conflicting flags can be refused)."""
    g = p.add_argument_group("decoding: --greedy | sampling (--temperature --top-k --top-p) | --beam")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="sampling: divide the logits by T > 0; lower is safer, higher is wilder (default 0.8)")
    g.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="sampling: only among the K most likely tokens, K >= 1 (default: all)")
    g.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="sampling: only among the fewest most likely tokens whose probability reaches P, "
                        "in (0, 1] (default 1: all)")
    g.add_argument("--beam", type=int, default=None, metavar="W",
                   help="beam search of width W >= 1 (deterministic)"
                        + ("; prints the --num-samples best with their log-probability" if samples else ""))
    g.add_argument("--length-penalty", type=float, default=None, metavar="A",
                   help="beam: rank hypotheses by log-probability / length**A (default 1.0; 0: raw sum)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalise tokens already in the text (CTRL): logit/R if > 0, logit*R if < 0 "
                        "(default 1.0: off; try 1.2)")
    g.add_argument("--max-new-tokens", type=int, default=500 if samples else 300, metavar="N",
                   help=f"stop after N new tokens (default {500 if samples else 300})")
    g.add_argument("--min-new-tokens", type=int, default=0, metavar="N",
                   help="[END] cannot be chosen before N new tokens (default 0)")
    if samples:
        g.add_argument("--num-samples", type=int, default=1, metavar="N",
                       help="N samples, generated as one batch, each ending at its own [END]; with --beam, "
                            "the N best hypotheses, N <= W (default 1)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed: the same seed gives the same text (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when present (default auto)")
    _add_threads_flag(p)
    p.add_argument("--precision", choices=["auto", "float32", "float16"], default="auto",
                   help="weights used at each step: float16 = packed half-precision copies, float32 arithmetic "
                        "(CPU, x86; 2-3x faster for one stream, logits within ~1e-3); float32 = the model's own "
                        "numbers; auto = float16 where supported (default auto)")


def _add_adaptive_flags(p: argparse.ArgumentParser, command: str) -> None:
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


def _adaptive_configs(args: argparse.Namespace, dynamic_on: bool) -> tuple[Any, Any, list[str]]:
    """(CacheConfig or None, DynamicConfig or None, the tunable values given explicitly) from the flags."""
    from .adaptive import CacheConfig, DynamicConfig

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


def add_sample_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a checkpoint", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate text after [END] + PROMPT until [END] (not printed) or --max-new-tokens, "
                    "printing it as it comes.\n\n"
                    "Prompt symbols the vocabulary lacks become <unk>; a warning names them "
                    "(--strict-prompt refuses them instead).",
        epilog="examples:\n"
               "  lmgen sample checkpoints/run --prompt 'def ' --temperature 0.8 --top-p 0.95\n"
               "  lmgen sample checkpoints/run --greedy --max-new-tokens 200\n"
               "  lmgen sample checkpoints/run --beam 5 --num-samples 3 --length-penalty 1.0\n"
               "  lmgen sample checkpoints/run --num-samples 3 --seed 1\n"
               "  lmgen sample checkpoints/run --prompt \"$(cat letter.txt)\" --cache 500 --adapt",
    )
    p.add_argument("checkpoint", help="checkpoint folder, or run folder (its best/, else last/)")
    p.add_argument("--prompt", default="", help="text to continue (default: empty, a new document)")
    p.add_argument("--strict-prompt", action="store_true",
                   help="refuse a prompt with symbols the vocabulary lacks (default: they become <unk>)")
    _add_generation_flags(p)
    _add_adaptive_flags(p, "sample")
    p.set_defaults(func=cmd_sample)


def cmd_corpus(args: argparse.Namespace) -> int:
    from . import corpora, tables

    if args.action == "list":
        print(tables.format_corpus_table())
    elif args.action == "fetch":
        if not args.name:
            raise ConfigError("lmgen corpus fetch needs a corpus NAME; see `lmgen corpus list`")
        path = corpora.fetch(args.name, dest=Path(args.dest) if args.dest else None, mirror=args.mirror)
        print(f"{args.name}: ready in {path}")
    elif args.action == "info":
        corpus = corpora.resolve(args.name, mirror=args.mirror)
        print(tables.format_info(corpus))
    return 0


def add_corpus_parser(sub: Any) -> None:
    p = sub.add_parser("corpus", help="list, fetch or describe corpora", formatter_class=_Formatter,
                       description="Named corpora come from the mirror folder ($LMGEN_CORPORA), the cache "
                                   "($LMGEN_CACHE) or a download; any text file or folder is a corpus too.")
    p.add_argument("action", choices=["list", "fetch", "info"], help="what to do")
    p.add_argument("name", nargs="?", help="corpus name, or (for info) a text file or folder")
    p.add_argument("--mirror", help="a local folder laid out like the corpus mirror", default=None)
    p.add_argument("--dest", help="fetch: where to put the files (default: the cache folder)", default=None)
    p.set_defaults(func=cmd_corpus)


# --- eval (issue 4: lmgen/evaluate.py) --------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .adaptive import AdaptiveRequest
    from .devices import resolve_device
    from .evaluate import evaluate_checkpoint

    cache, dynamic, given = _adaptive_configs(args, args.dynamic)
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
        "eval", help="perplexity and bits per character of a checkpoint", formatter_class=_Formatter,
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
    p.add_argument("--separator", choices=["line", "blank", "file", "none"], default=None,
                   help="for a text file: where documents ([END]) end (default: as the training corpus)")
    p.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0 = all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="where to run the model")
    _add_threads_flag(p)
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    _add_adaptive_flags(p, "eval")
    p.set_defaults(func=cmd_eval)


# --- plot (issue 4: lmgen/plot.py) ------------------------------------------------------
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
    from .plot import plot_runs

    _output_file(args.out, "curves.png")
    plot_runs(args.runs, labels=args.label, out=args.out, title=args.title)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_plot_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plot", help="training curves of one or more runs", formatter_class=_Formatter,
        description="Training and validation loss and perplexity against steps and training time, "
                    "from each run folder's metrics.jsonl; several runs share one figure.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (lmgen train --out)")
    p.add_argument("--out", default="curves.png", help="image file to write (.png, .svg, .pdf)")
    p.add_argument("--label", action="append", help="a label per run, in order (default: folder names)")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=cmd_plot)


# --- repl (issue 5: lmgen/repl.py) ------------------------------------------------------
def cmd_repl(args: argparse.Namespace) -> int:
    from .adaptive import DynamicConfig, live_adaptation
    from .checkpoint import load_checkpoint
    from .devices import resolve_device
    from .repl import run

    config = _generation_config(args)
    cache, dynamic, _ = _adaptive_configs(args, True)  # the --dyn-* flags set :adapt's steps, on or off
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    m = ckpt.model.config
    banner = (f"lmgen repl: {ckpt.folder} ({ckpt.tokenizer.kind} tokenizer, {ckpt.tokenizer.vocab_size} tokens; "
              f"{m.cell} {m.layers}x{m.hidden})")
    live = live_adaptation(ckpt, dynamic or DynamicConfig())
    if args.adapt:
        print(f"lmgen: --adapt: gradient statistics on up to {live.config.stats_tokens:,} training tokens...",
              file=sys.stderr)
        live.switch(True)
    return run(ckpt.model, ckpt.tokenizer, config, seed=args.seed, banner=banner, cache=cache, adapt=live)


def add_repl_parser(sub: Any) -> None:
    p = sub.add_parser(
        "repl", help="type prompts, watch continuations stream", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An interactive loop with line editing and history ($LMGEN_CACHE/repl_history, else "
                    "~/.lmgen_history). Type a prompt: its continuation streams. An empty line continues the "
                    "text with its state. Commands: :temp :top-k :top-p :sample :greedy :beam :length-penalty "
                    ":repetition-penalty :max :min :seed :show :reset :continue :help :quit. Ctrl-C stops a "
                    "generation, Ctrl-D quits. Prompt symbols the vocabulary lacks become <unk> (with a note).\n\n"
                    "The flags set the starting values.",
        epilog="example:\n  lmgen repl checkpoints/run --temperature 0.7",
    )
    p.add_argument("checkpoint", help="checkpoint folder, or run folder (its best/, else last/)")
    _add_generation_flags(p, samples=False)
    _add_adaptive_flags(p, "repl")
    p.set_defaults(func=cmd_repl)


# --- viz (issue 6: lmgen/viz.py) --------------------------------------------------------
def cmd_viz(args: argparse.Namespace) -> int:
    from .activations import regex_mask, trace
    from .checkpoint import load_checkpoint
    from .probe import rank_units
    from .viz import show

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
    p = sub.add_parser("viz", help="colour a text by one unit's activation (HTML page)", formatter_class=_Formatter,
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

    add_corpus_parser(sub)
    add_train_parser(sub)
    add_sample_parser(sub)
    add_eval_parser(sub)
    add_plot_parser(sub)
    add_viz_parser(sub)
    add_repl_parser(sub)
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


_NEEDS = {"sample": ("stdout",), "eval": ("stdout",), "corpus": ("stdout",), "repl": ("stdin", "stdout")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command in _NEEDS or args.command == "train":
        # Before torch loads: the OpenMP wait policy is read once, then (see lmgen/cores.py).
        from .cores import apply, prepare

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
        from .cache import CACHE_ENV, cache_folder

        where = f"{exc.filename}: " if exc.filename else ""
        hint = (f" (under the cache folder: set ${CACHE_ENV} to a writable folder)"
                if exc.filename and str(exc.filename).startswith(str(cache_folder())) else "")
        print(f"lmgen: error: {where}{exc.strerror or exc}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
