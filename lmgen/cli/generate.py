"""``lmgen sample`` and ``lmgen repl``: the decoding flags they share, and the two commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from ..config import MAX_SEED
from ..errors import ConfigError
from .copycheck import CopyOptions, add_copy_flags
from .flags import adaptive_configs, add_adaptive_flags, add_threads_flag


def _seed(text: str) -> int:
    """An argparse type: a whole number that torch.Generator accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^63), got {text}")
    return value


def _stop_string(text: str) -> str:
    """An argparse type: a stop string, with the escapes \\n \\t \\r \\\\ understood."""
    from ..sampling.track import unescape

    value = unescape(text)
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _clamp(text: str) -> tuple[str, Any]:
    """An argparse type: ``UNIT=VALUE`` of ``--clamp`` (checked against the model once it is loaded)."""
    from ..intervene import parse_assignment

    try:
        unit, action = parse_assignment(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if action == "mean":
        raise argparse.ArgumentTypeError(f"{unit}=mean needs the unit's mean: give it as a number "
                                         "(lmgen viz shows its values over a text)")
    return unit, action


def _ablated(text: str) -> tuple[str, Any]:
    """An argparse type: the UNIT of ``--ablate`` (set to 0)."""
    from ..intervene import parse_unit

    try:
        parse_unit(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip(), "zero"


def _interventions(args: argparse.Namespace, model: Any) -> list[Any]:
    """The checked edits of ``--clamp`` and ``--ablate`` (lmgen.intervene) for ``model``."""
    from ..intervene import resolve

    return resolve(model, dict((args.clamp or []) + (args.ablate or [])))


def _generation_config(args: argparse.Namespace) -> Any:
    from ..sampling import config_from_flags

    config = config_from_flags(
        greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, beam=args.beam,
        length_penalty=args.length_penalty, repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        num_samples=getattr(args, "num_samples", 1), precision=args.precision,
    )
    return config.replace(stop_strings=tuple(args.stop)) if args.stop else config


def _prompt(args: argparse.Namespace) -> str:
    """The prompt of ``--prompt TEXT``, ``--prompt -`` (stdin) or ``--prompt-file FILE``."""
    from ..sampling.textfiles import read_prompt

    if args.prompt is not None and args.prompt_file is not None:
        raise ConfigError("--prompt and --prompt-file exclude each other; give one")
    if args.prompt_file is not None:
        return read_prompt(args.prompt_file, "--prompt-file")
    if args.prompt == "-":
        if sys.stdin is not None and sys.stdin.isatty():
            print("lmgen: reading the prompt from the terminal; end it with Ctrl-D", file=sys.stderr)
        return read_prompt("-", "--prompt")
    return args.prompt or ""


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
    g.add_argument("--stop", action="append", type=_stop_string, default=None, metavar="STR",
                   help="stop right after the first match of STR in the generated text (not the prompt), "
                        "found across tokens; the text ends with STR, included. Repeatable: the first match "
                        "of any; each sample stops on its own. \\n \\t \\\\ are understood, e.g. --stop '\\n\\n' "
                        "(default: none)")
    add_copy_flags(g, samples)
    units = p.add_argument_group("interventions: set units while generating (docs/interventions.md)")
    units.add_argument("--clamp", action="append", type=_clamp, default=None, metavar="UNIT=VALUE",
                       help="set UNIT to VALUE at every step (the next step reads it), e.g. --clamp 'L0.c[43]=2.5'; "
                            "units are named as lmgen.activations.trace names them, L<layer>.<kind>[<index>] with "
                            "kinds h c i f g o (LSTM), h r z n (GRU), h (RNN); VALUE *S scales the unit by S "
                            "instead. Repeatable (default: none)")
    units.add_argument("--ablate", action="append", type=_ablated, default=None, metavar="UNIT",
                       help="set UNIT to 0 at every step, e.g. --ablate 'L0.h[5]'. Repeatable (default: none)")
    if samples:
        g.add_argument("--num-samples", type=int, default=1, metavar="N",
                       help="N samples, generated as one batch, each ending at its own [END]; with --beam, "
                            "the N best hypotheses, N <= W (default 1)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed: the same seed gives the same text (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when present (default auto)")
    add_threads_flag(p)
    p.add_argument("--precision", choices=["auto", "float32", "float16"], default="auto",
                   help="weights used at each step: float16 = packed half-precision copies, float32 arithmetic "
                        "(CPU, x86; 2-3x faster for one stream, logits within ~1e-3); float32 = the model's own "
                        "numbers; auto = float16 where supported (default auto)")


def cmd_sample(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as scope:  # --clamp / --ablate stay in force until the samples are out
        return _cmd_sample(args, scope)


def _cmd_sample(args: argparse.Namespace, scope: contextlib.ExitStack) -> int:
    import torch

    from ..checkpoint import load_checkpoint
    from ..devices import resolve_device
    from ..sampling import generate, prime, stream_samples
    from ..sampling.records import sample_records, write_records
    from ..sampling.textfiles import check_output

    config = _generation_config(args)  # bad flags, files and prompts fail before the checkpoint loads
    if args.out == "-":
        raise ConfigError("--out needs a file name; without --out the samples print to stdout")
    out_path = check_output(args.out, "--out") if args.out is not None else None
    prompt = _prompt(args)
    cache, dynamic, _ = adaptive_configs(args, args.adapt)
    if cache is not None and config.strategy == "beam":
        raise ConfigError("--cache works with greedy search and sampling, not with --beam")
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    model = ckpt.model
    if dynamic is not None and prompt:  # learn the prompt first: the sample leans towards it
        from ..adaptive import live_adaptation

        live = live_adaptation(ckpt, dynamic)
        print(f"lmgen: --adapt: gradient statistics on up to {dynamic.stats_tokens:,} training tokens...",
              file=sys.stderr)
        live.switch(True)
        steps = live.learn(ckpt.tokenizer.encode(prompt), ckpt.tokenizer.end_id)
        model = live.model
        print(f"lmgen: adapted to the prompt: {steps} dynamic-evaluation steps (the checkpoint is unchanged)",
              file=sys.stderr)
    from ..intervene import intervene

    scope.enter_context(intervene(model, _interventions(args, model)))  # before the prompt is read
    ctx = prime(model, ckpt.tokenizer, prompt, unknown="error" if args.strict_prompt else "replace", cache=cache)
    if ctx.unknown:
        print(f"lmgen: warning: the vocabulary lacks {', '.join(map(repr, ctx.unknown))} (in the prompt); "
              "they became <unk> (--strict-prompt refuses instead)", file=sys.stderr)
    copies = CopyOptions(args, ckpt, config.strategy)  # --max-copy, --check-copy: the training index, once
    ctx.guard = copies.guard()
    n = config.num_return_sequences
    if out_path is not None:
        records = sample_records(model, ckpt.tokenizer, prompt, config, seed=args.seed, context=ctx)
        write_records(records, out_path)
        for r in records if copies.check else []:
            print(f"--- sample {r.index + 1} of {n} ---\n{copies.report(r.prompt + r.text)}")
        stops = [r.stop.partition(":")[0] for r in records]
        print(f"lmgen: wrote {n} sample{'s' if n > 1 else ''} to {out_path} ({stops.count('end')} ended by [END], "
              f"{stops.count('stop')} at a stop string, {stops.count('length')} cut at --max-new-tokens)",
              file=sys.stderr)
        return 0
    generator = torch.Generator().manual_seed(args.seed)
    out = sys.stdout
    if config.strategy == "beam":
        for rank, s in enumerate(generate(model, ckpt.tokenizer, ctx, config)):
            about = f"score {s.score:.4f}, normalised {s.normalized:.4f}, {len(s.ids)} tokens, " + _ended(s.stop)
            if n > 1:
                out.write(f"--- beam {rank + 1} of {n}: {about} ---\n")
            else:
                print(f"lmgen: beam: {about}", file=sys.stderr)
            out.write(prompt + s.text + "\n" + (copies.report(prompt + s.text) + "\n" if copies.check else ""))
        return 0
    shown = -1
    for index, piece in copies.with_reports(stream_samples(model, ckpt.tokenizer, ctx, config, generator=generator),
                                            n, prompt):
        while shown < index:  # the next sample starts (samples with no text included)
            shown += 1
            out.write(("\n" if shown else "") + (f"--- sample {shown + 1} of {n} ---\n" if n > 1 else "")
                      + prompt)
        out.write(piece)
        out.flush()
    while shown < n - 1:
        shown += 1
        out.write(("\n" if shown else "") + (f"--- sample {shown + 1} of {n} ---\n" if n > 1 else "") + prompt)
    out.write("\n")
    return 0


def _ended(stop: str) -> str:
    if stop.startswith("stop:"):
        return f"stopped at {stop[5:]!r}"
    return "ended by [END]" if stop == "end" else "cut at --max-new-tokens"


def add_sample_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a checkpoint", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate text after [END] + PROMPT until [END] (not printed), a --stop string or "
                    "--max-new-tokens, printing it as it comes (or, with --out, writing JSON records).\n\n"
                    "Prompt symbols the vocabulary lacks become <unk>; a warning names them "
                    "(--strict-prompt refuses them instead).",
        epilog="examples:\n"
               "  lmgen sample checkpoints/run --prompt 'def ' --temperature 0.8 --top-p 0.95\n"
               "  lmgen sample checkpoints/run --greedy --max-new-tokens 200\n"
               "  lmgen sample checkpoints/run --beam 5 --num-samples 3 --length-penalty 1.0\n"
               "  lmgen sample checkpoints/run --num-samples 3 --seed 1\n"
               "  lmgen sample checkpoints/run --prompt-file letter.txt --stop '\\n\\n' --num-samples 20 "
               "--out samples.jsonl\n"
               "  echo 'Once upon' | lmgen sample checkpoints/run --prompt - --stop '.'\n"
               "  lmgen sample checkpoints/run --prompt \"$(cat letter.txt)\" --cache 500 --adapt\n"
               "  lmgen sample checkpoints/run --clamp 'L0.c[43]=2.5' --ablate 'L0.h[5]'",
    )
    p.add_argument("checkpoint", help="checkpoint folder, or run folder (its best/, else last/)")
    p.add_argument("--prompt", default=None,
                   help="text to continue; - reads it from stdin (default: empty, a new document)")
    p.add_argument("--prompt-file", default=None, metavar="FILE",
                   help="continue the text of FILE (UTF-8, at most 128 KiB; one final newline is dropped)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the samples to FILE as JSON lines instead of printing them: one record per sample "
                        "with text (without the prompt), prompt, seed, tokens, ids, logprob (the model's summed "
                        "log-probability of the tokens, [END] included, in nats) and stop (end, stop:STR or "
                        "length); written whole or not at all (default: print)")
    p.add_argument("--strict-prompt", action="store_true",
                   help="refuse a prompt with symbols the vocabulary lacks (default: they become <unk>)")
    _add_generation_flags(p)
    add_adaptive_flags(p, "sample")
    p.set_defaults(func=cmd_sample)


def cmd_repl(args: argparse.Namespace) -> int:
    from ..adaptive import DynamicConfig, live_adaptation
    from ..checkpoint import load_checkpoint
    from ..devices import resolve_device
    from ..repl import run

    config = _generation_config(args)
    cache, dynamic, _ = adaptive_configs(args, True)  # the --dyn-* flags set :adapt's steps, on or off
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    m = ckpt.model.config
    banner = (f"lmgen repl: {ckpt.folder} ({ckpt.tokenizer.kind} tokenizer, {ckpt.tokenizer.vocab_size} tokens; "
              f"{m.cell} {m.layers}x{m.hidden})")
    live = live_adaptation(ckpt, dynamic or DynamicConfig())
    if args.adapt:
        print(f"lmgen: --adapt: gradient statistics on up to {live.config.stats_tokens:,} training tokens...",
              file=sys.stderr)
        live.switch(True)
    copy_guard = CopyOptions(args, ckpt, config.strategy).guard()  # --max-copy
    return run(ckpt.model, ckpt.tokenizer, config, seed=args.seed, banner=banner, cache=cache, adapt=live,
               copy_guard=copy_guard, interventions=_interventions(args, ckpt.model))


def add_repl_parser(sub: Any) -> None:
    p = sub.add_parser(
        "repl", help="type prompts, watch continuations stream", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An interactive loop with line editing and history ($LMGEN_CACHE/repl_history, else "
                    "~/.lmgen_history). Type a prompt: its continuation streams. An empty line continues the "
                    "text with its state. Commands: :temp :top-k :top-p :sample :greedy :beam :length-penalty "
                    ":repetition-penalty :max :min :seed :stop :pick :probs :cache :adapt :clamp :ablate :clear :save "
                    ":show :reset "
                    ":continue :help "
                    ":quit. A line ending with \\ goes on on the next line; pasted lines are one prompt. Ctrl-C "
                    "stops a generation, Ctrl-D quits. Prompt symbols the vocabulary lacks become <unk> (with a "
                    "note).\n\n"
                    "The flags set the starting values.",
        epilog="example:\n  lmgen repl checkpoints/run --temperature 0.7",
    )
    p.add_argument("checkpoint", help="checkpoint folder, or run folder (its best/, else last/)")
    _add_generation_flags(p, samples=False)
    add_adaptive_flags(p, "repl")
    p.set_defaults(func=cmd_repl)
