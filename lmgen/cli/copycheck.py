"""``lmgen copycheck``, and the originality flags of ``lmgen sample`` / ``lmgen repl``
(``--max-copy N``, ``--check-copy``): their registration and what the commands do with them."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Iterator

from ..errors import ConfigError
from .flags import Formatter, add_threads_flag

INPUT_CAP = 64 << 20  # bytes of samples read at most


def _max_copy(text: str) -> int:
    """An argparse type: a whole number of tokens >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of tokens, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 token, got {value}")
    return value


def add_copy_flags(group: Any, samples: bool) -> None:
    """``--max-copy`` (sample and repl) and ``--check-copy`` (sample) in the decoding flags."""
    group.add_argument("--max-copy", type=_max_copy, default=None, metavar="N",
                       help="never copy more than N tokens in a row from the training split: a token that would "
                            "extend a verbatim training span beyond N tokens is masked before choosing ([END] "
                            "never is); greedy and sampling only. The index of the training split is built once "
                            "and cached (default: off)")
    if samples:
        group.add_argument("--check-copy", action="store_true",
                           help="after each sample, report its longest span copied verbatim from the training "
                                "split, where it is, and the share of its n-grams (8 characters, or 4 words/pieces) "
                                "found in training, as `lmgen copycheck` does")


def _note(message: str) -> None:
    print(f"lmgen: {message}", file=sys.stderr, flush=True)


class CopyOptions:
    """What ``--max-copy`` and ``--check-copy`` need of one checkpoint: its training index
    (built once, only when a flag asks for it), the guard and the report."""

    def __init__(self, args: argparse.Namespace, ckpt: Any, strategy: str):
        self.limit = getattr(args, "max_copy", None)
        self.check = bool(getattr(args, "check_copy", False))
        if self.limit is not None and strategy == "beam":
            raise ConfigError("--max-copy works with greedy search and sampling, not with --beam")
        self.tokenizer = ckpt.tokenizer
        self.index = None
        if self.limit is not None or self.check:
            from ..copycheck import training_index

            self.index = training_index(ckpt, log=_note)

    def guard(self) -> Any:
        """A fresh :class:`~lmgen.copycheck.CopyGuard` for ``--max-copy`` (None without it)."""
        from ..copycheck import CopyGuard

        return CopyGuard(self.index, self.limit) if self.limit is not None else None

    def report(self, text: str) -> str:
        """The ``--check-copy`` report of a sample's text (prompt included), as lines to print."""
        from ..copycheck import copy_report

        result = copy_report(self.index, self.tokenizer, self.tokenizer.encode(text))
        return "\n".join("[copycheck] " + line for line in result.format().splitlines())

    def with_reports(self, pieces: Iterator[tuple[int, str]], n: int, prompt: str) -> Iterator[tuple[int, str]]:
        """``stream_samples``' (sample, piece) stream with each sample's report as its last
        piece (after a newline), when ``--check-copy``; samples without text included."""
        if not self.check:
            yield from pieces
            return
        texts = [""] * n
        done = 0  # samples before this one are complete
        for index, piece in pieces:
            while done < index:
                yield done, "\n" + self.report(prompt + texts[done])
                done += 1
            texts[index] += piece
            yield index, piece
        while done < n:
            yield done, "\n" + self.report(prompt + texts[done])
            done += 1


def _read(path: str) -> tuple[str, str]:
    """(text, name) of FILE, or of standard input for ``-``; a clear error for a bad one."""
    if path == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise ConfigError("standard input is closed; give a FILE of samples instead of -")
        data = sys.stdin.buffer.read(INPUT_CAP + 1) if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        name = "standard input"
    else:
        name = path
        try:
            with open(path, "rb") as f:
                data = f.read(INPUT_CAP + 1)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file; give a text file of samples, or - for standard input") from None
        except IsADirectoryError:
            raise ConfigError(f"{path} is a folder; give a text file of samples, or - for standard input") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > INPUT_CAP:
        raise ConfigError(f"{name} is larger than {INPUT_CAP >> 20} MiB; check fewer samples at a time")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name} is not UTF-8 text (byte {exc.start}); give the samples as UTF-8") from None
    if not text.strip():
        raise ConfigError(f"{name} is empty: there is no sample to check")
    return text, name


def cmd_copycheck(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..copycheck import copy_report, split_samples, training_index

    text, name = _read(args.file)  # a bad input fails before the checkpoint loads
    samples = split_samples(text, name)
    ckpt = load_checkpoint(args.checkpoint, "cpu")
    index = training_index(ckpt, args.corpus, log=_note)
    tok = ckpt.tokenizer
    reports = [copy_report(index, tok, tok.encode(sample)) for sample in samples]
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt.folder), "training_tokens": index.n,
                          "samples": [r.to_dict() for r in reports]}, ensure_ascii=False, indent=2))
        return 0
    for k, report in enumerate(reports):
        if len(reports) > 1:
            print(f"--- sample {k + 1} of {len(reports)} ---")
        print(report.format())
    if len(reports) > 1:
        spans = [r.longest for r in reports]
        shares = [r.share for r in reports if r.share is not None]
        unit = reports[0].unit
        print(f"--- {len(reports)} samples: longest copied span min {min(spans):,}, median "
              f"{statistics.median(spans):g}, max {max(spans):,} {unit}"
              + (f"; {reports[0].n}-grams found in training {100 * statistics.mean(shares):.1f} % on average"
                 if shares else ""))
    return 0


def add_copycheck_parser(sub: Any) -> None:
    p = sub.add_parser(
        "copycheck", help="how much of a sample is copied from the training text", formatter_class=Formatter,
        description="For each sample: the longest span copied verbatim from the checkpoint's training split "
                    "(in tokens: characters for a char model), where it is in the sample and in training, how "
                    "often it occurs there, and the share of the sample's n-grams (n = 8 characters, or 4 "
                    "words/pieces) found in training.\n\n"
                    "FILE holds one sample, or what `lmgen sample --num-samples N` printed (one sample after "
                    "each '--- sample i of N ---' line), or the JSON lines of `lmgen sample --out` (prompt + "
                    "text of each record). The training split is indexed once (a suffix array of its token ids, "
                    "cached beside them).",
        epilog="examples:\n  lmgen sample checkpoints/run --num-samples 5 > samples.txt\n"
               "  lmgen copycheck checkpoints/run samples.txt\n"
               "  lmgen sample checkpoints/run --out samples.jsonl && lmgen copycheck checkpoints/run samples.jsonl "
               "--json\n  echo 'First Citizen:' | lmgen copycheck checkpoints/run -")
    p.add_argument("checkpoint", help="checkpoint folder, or run folder (its best/, else last/)")
    p.add_argument("file", metavar="FILE", help="the samples: a text file, JSON lines, or - for standard input")
    p.add_argument("--corpus", default=None,
                   help="check against this corpus NAME|PATH's training split (default: the checkpoint's own)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    add_threads_flag(p)
    p.set_defaults(func=cmd_copycheck)
