"""``lmgen sample`` and ``lmgen repl``: the decoding flags they share, and the two commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import MAX_SEED
from ..errors import ConfigError
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


def _generation_config(args: argparse.Namespace) -> Any:
    from ..sampling import config_from_flags

    return config_from_flags(
        greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, beam=args.beam,
        length_penalty=args.length_penalty, repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        num_samples=getattr(args, "num_samples", 1), precision=args.precision,
    )


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
    add_threads_flag(p)
    p.add_argument("--precision", choices=["auto", "float32", "float16"], default="auto",
                   help="weights used at each step: float16 = packed half-precision copies, float32 arithmetic "
                        "(CPU, x86; 2-3x faster for one stream, logits within ~1e-3); float32 = the model's own "
                        "numbers; auto = float16 where supported (default auto)")


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_checkpoint
    from ..devices import resolve_device
    from ..sampling import generate, prime, stream_samples

    config = _generation_config(args)  # bad flags fail before the checkpoint loads
    cache, dynamic, _ = adaptive_configs(args, args.adapt)
    if cache is not None and config.strategy == "beam":
        raise ConfigError("--cache works with greedy search and sampling, not with --beam")
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    model = ckpt.model
    if dynamic is not None and args.prompt:  # learn the prompt first: the sample leans towards it
        from ..adaptive import live_adaptation

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
    add_adaptive_flags(p, "repl")
    p.set_defaults(func=cmd_repl)
