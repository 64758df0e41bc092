"""``lmgen eval`` as a library call: a checkpoint scored on a split or a text file, beside
its baselines, in one :class:`EvalReport`.

The scoring itself (every token a target, exact and batched modes, the figures) is
:mod:`lmgen.evaluate`'s; this module chooses the text (the checkpoint's corpus, another
corpus, or any text file), fits the n-gram baselines and wires in the adaptive methods.
These names are importable from :mod:`lmgen.evaluate` too.

>>> print(evaluate_checkpoint("checkpoints/ptb", split="test", baselines=["ngram:5"]).format())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .evaluate import EvalResult, evaluate_split, model_label

# Kneser-Ney counts every n-gram of every order up to N: memory grows with N, and past ~10
# the model only memorises the training text (PTB's best KN order is 5).
MAX_NGRAM = 10


def file_corpus(path: str, separator: str = "none", errors: str = "replace", drop_blank: bool = False):
    """A whole text file as a corpus whose only split, "test", is all of it.

    ``separator`` says where documents end ([END]): "none" (only at the end of the file),
    "line", "blank" (blank lines), "file" or a regular expression — use the one the model
    was trained with; ``drop_blank`` drops whitespace-only documents, as a run on your own
    text file did (docs/corpora.md).
    """
    from pathlib import Path

    from .corpora import Corpus
    from .errors import CorpusError

    p = Path(path).expanduser()
    if not p.is_file():
        raise CorpusError(f"{p} is not a text file; give --split valid, test or the path of a text file")
    if p.stat().st_size == 0:
        raise CorpusError(f"{p} is empty; give a text file with some text in it")
    return Corpus(p.name, [p], split="files", split_files={"test": [p]}, separator=separator, errors=errors,
                  description=f"the text file {p}", drop_blank=drop_blank)


@dataclass
class EvalReport:
    """``lmgen eval``'s answer: the checkpoint's result, then one per baseline."""

    checkpoint: str
    source: str  # e.g. "ptb test" or "the text file notes.txt"
    results: list[EvalResult]
    unknown_symbols: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed after the figures (e.g. where tuned values came from)
    tuning: dict[str, Any] | None = None  # the adaptive methods' grid search, for --json

    def to_dict(self) -> dict[str, Any]:
        row = {"checkpoint": self.checkpoint, "source": self.source, "unknown_symbols": self.unknown_symbols,
               "results": [r.to_dict() for r in self.results]}
        if self.notes:
            row["notes"] = self.notes
        if self.tuning is not None:
            row["tuning"] = self.tuning
        return row

    def format(self) -> str:
        """Human-readable lines: what was measured, the figures, and the comparison."""
        first = self.results[0]
        lines = [f"{self.checkpoint} on {self.source}", f"  {first.describe()}"]
        if first.unknown and self.unknown_symbols:
            shown = ", ".join(map(repr, self.unknown_symbols))
            lines.append(f"  note: {first.unknown:,} targets are <unk> (symbols the tokenizer lacks: {shown}); "
                         "each is scored as the one token <unk>, which flatters the figures")
        elif first.unknown:
            lines.append(f"  note: {first.unknown:,} targets are the text's own <unk> word (as in PTB), "
                         "scored like any other token")
        width = max(len(r.label) for r in self.results)
        for r in self.results:
            settings = f"  {r.extra['settings']}" if r.extra.get("settings") else ""
            lines.append(f"  {r.label:<{width}}  {r.summary()}  [{r.seconds:.1f} s]{settings}")
        if len(self.results) > 1:
            lines.append("  " + " vs ".join(f"{r.label} {r.perplexity:.1f}" for r in self.results) + " (perplexity)")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def parse_baseline(spec: str) -> int:
    """``"ngram:5"`` (or ``"ngram"``, order 5) -> 5; anything else raises ConfigError."""
    from .errors import ConfigError

    kind, _, order = spec.partition(":")
    if kind != "ngram" or (order and not order.isdigit()) or (order and not 1 <= int(order) <= MAX_NGRAM):
        raise ConfigError(f"--baseline must look like ngram:5 (an n-gram LM of order 1 to {MAX_NGRAM}), "
                          f"got {spec!r}")
    return int(order) if order else 5


def _unknown_symbols(tokenizer: Any, corpus: Any, split: str, limit: int = 20) -> list[str]:
    """The first ``limit`` symbols of a split that the tokenizer lacks, read piece by piece
    (~1 MB each, as the split was encoded), so a large file is never held whole in memory."""
    found: dict[str, None] = {}
    for text, _ in corpus.pieces(split):
        for symbol in tokenizer.unknown_symbols(text, limit):
            found.setdefault(symbol)
        if len(found) >= limit:
            break
    return list(found)[:limit]


def checkpoint_corpus(ckpt: Any, corpus: str | None = None) -> Any:
    """The corpus a checkpoint was trained on (or ``corpus``, a NAME|PATH), resolved but not read."""
    from . import corpora
    from .errors import ConfigError, CorpusError

    trained_on = ckpt.config.get("corpus") or {}
    name = corpus or trained_on.get("source") or trained_on.get("name")
    if not name:
        raise ConfigError("the checkpoint does not say which corpus it was trained on; pass --corpus NAME")
    try:  # read as the run read it: its separator and split of documents, for your own files
        return corpora.resolve(name, **corpora.resolve_options(ckpt.config.get("train") or {}, name))
    except CorpusError as exc:
        raise CorpusError(f"{exc} (the checkpoint was trained on {name!r}; pass --corpus NAME|PATH)") from None


def _evaluated_text(ckpt: Any, split: str | None, corpus: str | None, separator: str | None) -> tuple:
    """(corpus, split, label, whether it is a split of the training corpus) for ``lmgen eval --split``."""
    from . import corpora
    from .errors import ConfigError

    trained_on = ckpt.config.get("corpus") or {}
    if split is None or split in corpora.SPLIT_NAMES:
        source_corpus = checkpoint_corpus(ckpt, corpus)
        if split is None:
            split = "test" if "test" in source_corpus.splits else "valid"
        if trained_on.get("fingerprint") not in (None, source_corpus.fingerprint) and corpus is None:
            raise ConfigError(f"corpus {source_corpus.name!r} has changed since the checkpoint was trained; "
                              "pass --corpus to evaluate on it anyway")
        return source_corpus, split, f"{source_corpus.name} {split}", True
    spec = corpora.REGISTRY.get(trained_on.get("name", ""))
    if separator is None:
        separator = spec.separator if spec else (ckpt.config.get("train") or {}).get("separator", "none")
    drop_blank = spec is None and separator not in ("none", "file")  # as the run read your own text
    return (file_corpus(split, separator, drop_blank=drop_blank), "test",
            f"the text file {split} (documents end at: {separator})", False)


def evaluate_checkpoint(
    path: str,
    *,
    split: str | None = None,
    corpus: str | None = None,
    batch: int = 16,
    bptt: int = 256,
    exact: bool = False,
    baselines: list[str] | tuple[str, ...] = (),
    separator: str | None = None,
    device: str = "cpu",
    max_tokens: int = 0,
    adaptive: Any = None,
) -> EvalReport:
    """What ``lmgen eval`` does: score a checkpoint on a split (default test, else valid)
    of its training corpus (or ``corpus``), or on any text file; then each baseline
    (``"ngram:5"``: a 5-gram KN LM fitted to the same corpus's training split with the
    same tokenizer), with the same evaluator on the same tokens.

    ``adaptive`` (an :class:`lmgen.adaptive.AdaptiveRequest`) adds the continuous cache and/or
    dynamic evaluation, with their values tuned on a validation split first when it asks:
    that split and the training split are read before the evaluated one is.

    >>> print(evaluate_checkpoint("checkpoints/ptb", split="test", baselines=["ngram:5"]).format())  # doctest: +SKIP
    """
    from pathlib import Path

    from .checkpoint import load_checkpoint
    from .data import encode_split
    from .errors import ConfigError
    from .ngram import NgramLM

    orders = [parse_baseline(b) for b in baselines]
    if batch < 1 or bptt < 1:
        raise ConfigError(f"--batch and --bptt must be >= 1, got --batch {batch} --bptt {bptt}")
    ckpt = load_checkpoint(path, device)
    tokenizer = ckpt.tokenizer
    eval_corpus, eval_split, label, own = _evaluated_text(ckpt, split, corpus, separator)
    B = 1 if exact else batch
    plan = None
    if adaptive is not None and adaptive.active:
        from .adaptive import plan_methods

        # before the evaluated split is read: the values must not depend on it
        plan = plan_methods(ckpt.model, tokenizer, adaptive, checkpoint_corpus(ckpt, corpus), batch=B, bptt=bptt,
                            evaluated=eval_split if own else None)
    unknown_symbols: list[str] = []
    if encode_split(eval_corpus, tokenizer, eval_split).unknown:
        unknown_symbols = _unknown_symbols(tokenizer, eval_corpus, eval_split)

    results = [evaluate_split(ckpt.model, tokenizer, eval_corpus, eval_split, batch=B, bptt=bptt,
                              label=model_label(ckpt.model), max_tokens=max_tokens)]
    if plan is not None:
        results += plan.evaluate(ckpt.model, tokenizer, eval_corpus, eval_split, max_tokens=max_tokens)
    if orders:
        train_tokens = encode_split(checkpoint_corpus(ckpt, corpus), tokenizer, "train").tokens
        for order in orders:
            lm = NgramLM.fit(train_tokens, order, tokenizer.vocab_size, tokenizer.end_id)
            results.append(evaluate_split(lm, tokenizer, eval_corpus, eval_split, batch=B, bptt=bptt,
                                          label=lm.label, max_tokens=max_tokens))
    report = EvalReport(str(Path(path)), label, results, unknown_symbols)
    if plan is not None:
        report.notes, report.tuning = plan.notes(), plan.tuning_dict()
    return report
