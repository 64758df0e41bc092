"""``lmgen eval --cache/--dynamic [--tune-on valid]`` for a checkpoint: which methods, with
which values, from where; then their figures on the evaluated split.

The order is the honest protocol's: the training split (gradient statistics) and the tuning
split are read and every value is fixed (:func:`plan_methods`) before the evaluated split is
read (:meth:`Plan.evaluate`). Tuning on the split that is reported is refused for test and
flagged for any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection

from ..errors import ConfigError
from ..evaluate import EvalResult
from .cache import CacheConfig
from .dynamic import DynamicConfig, GradientStats, gradient_statistics
from .score import evaluate_adaptive
from .tune import TUNABLE, Choice, Tuning, tune_adaptive


@dataclass(frozen=True)
class AdaptiveRequest:
    """What ``lmgen eval`` was asked for: the methods, and whether and where to tune them.

    >>> AdaptiveRequest(cache=CacheConfig(500), tune_on="valid", fixed={"theta"})  # doctest: +SKIP
    """

    cache: CacheConfig | None = None
    dynamic: DynamicConfig | None = None
    tune_on: str | None = None  # a split of the training corpus (not test), or None: the values as given
    tune_tokens: int = 0  # tune on the first N tokens of that split (0: all)
    fixed: Collection[str] = ()  # hyper-parameters given explicitly: held when tuning

    def __post_init__(self) -> None:
        if self.tune_on == "test":
            raise ConfigError("--tune-on test would report test figures tuned on the test split; use --tune-on valid")
        if self.tune_on is not None and not (self.cache or self.dynamic):
            raise ConfigError("--tune-on tunes --cache and --dynamic; add one of them")
        if not (isinstance(self.tune_tokens, int) and self.tune_tokens >= 0):
            raise ConfigError(f"--tune-tokens must be a whole number >= 0, got {self.tune_tokens!r}")
        unknown = set(self.fixed) - set(TUNABLE)
        assert not unknown, f"not tunable: {unknown}"

    @property
    def active(self) -> bool:
        return bool(self.cache or self.dynamic)

    def methods(self) -> list[tuple[str, CacheConfig | None, DynamicConfig | None]]:
        """cache, dynamic, and both when both are asked."""
        out = []
        if self.cache:
            out.append(("cache", self.cache, None))
        if self.dynamic:
            out.append(("dynamic", None, self.dynamic))
        if self.cache and self.dynamic:
            out.append(("cache+dynamic", self.cache, self.dynamic))
        return out


@dataclass
class Plan:
    """The methods with their final values, and what they came from."""

    choices: list[Choice]
    stats: GradientStats | None
    tuning: Tuning | None
    batch: int = 1
    bptt: int = 256
    warnings: list[str] = field(default_factory=list)

    def evaluate(self, model: Any, tokenizer: Any, corpus: Any, split: str, *, max_tokens: int = 0) -> list[EvalResult]:
        """Each method's result on ``split`` of ``corpus`` (the values are fixed by now)."""
        from ..data import encode_split

        tokens = encode_split(corpus, tokenizer, split).tokens
        chars = nbytes = 0
        if max_tokens and max_tokens < len(tokens):
            tokens = tokens[:max_tokens]
        else:
            chars, nbytes = corpus.num_chars(split), corpus.num_bytes(split)
        results = []
        for choice in self.choices:
            r = evaluate_adaptive(model, tokens, cache=choice.cache, dynamic=choice.dynamic, stats=self.stats,
                                  batch=self.batch, bptt=self.bptt, end_id=tokenizer.end_id,
                                  unk_id=tokenizer.unk_id, chars=chars, num_bytes=nbytes)
            r.extra.update(corpus=corpus.name, split=split, values_from=self._source(choice),
                           settings=_describe(choice))
            if self.tuning is not None:
                r.extra["tuning_perplexity"] = choice.perplexity
            results.append(r)
        return results

    def _source(self, choice: Choice) -> dict[str, str]:
        names = (["theta", "lambda"] if choice.cache else []) + (["lr", "decay"] if choice.dynamic else [])
        tuned = self.tuning.tuned if self.tuning else []
        return {n: (self.tuning.source if n in tuned else "given") for n in names}

    def notes(self) -> list[str]:
        lines = list(self.warnings)
        if self.tuning is not None:
            t = self.tuning
            held = [n for n in TUNABLE if n not in t.tuned and any(n in self._source(c) for c in self.choices)]
            lines.append(f"values: {', '.join(t.tuned) or 'none'} tuned on {t.source} ({t.seconds:.0f} s; the grid is "
                         f"in --json){'; ' + ', '.join(held) + ' as given' if held else ''}; the evaluated split "
                         "was read only after")
        elif self.choices:
            lines.append("values: as given (not tuned; --tune-on valid chooses them on the validation split)")
        if self.stats is not None:
            lines.append(f"dynamic evaluation: sqrt(MS_g) from {self.stats.tokens:,} training tokens "
                         f"({self.stats.batches} batches); every segment scored before its update")
        return lines

    def tuning_dict(self) -> dict[str, Any] | None:
        return self.tuning.to_dict() if self.tuning is not None else None


def _describe(choice: Choice) -> str:
    parts = []
    if choice.cache:
        c = choice.cache
        parts.append(f"N={c.size} θ={c.theta:g} λ={c.lam:g}")
    if choice.dynamic:
        d = choice.dynamic
        parts.append(f"lr={d.lr:g} decay={d.decay:g} T={d.segment}")
    return "; ".join(parts)


def training_statistics(model: Any, tokenizer: Any, corpus: Any, config: DynamicConfig) -> GradientStats:
    """:func:`gradient_statistics` on the training split of ``corpus`` (encoded with ``tokenizer``, cached)."""
    from ..data import encode_split

    return gradient_statistics(model, encode_split(corpus, tokenizer, "train").tokens, config)


def plan_methods(model: Any, tokenizer: Any, request: AdaptiveRequest, corpus: Any, *, batch: int = 1,
                 bptt: int = 256, evaluated: str | None = None) -> Plan:
    """Gradient statistics (training split) and tuning (``request.tune_on``) for ``request``'s methods.

    Reads the training corpus's train and tuning splits only. ``evaluated`` names the split
    that will be reported, when it is one of the same corpus's.
    """
    from ..data import encode_split

    if request.tune_on is not None and request.tune_on not in corpus.splits:
        raise ConfigError(f"--tune-on {request.tune_on}: corpus {corpus.name!r} has no such split "
                          f"(it has: {', '.join(corpus.splits)})")
    stats = training_statistics(model, tokenizer, corpus, request.dynamic) if request.dynamic else None
    warnings = []
    if request.tune_on is None:
        choices = [Choice(name, c, d, float("nan"), 0) for name, c, d in request.methods()]
        return Plan(choices, stats, None, batch, bptt)
    if request.tune_on == evaluated:
        warnings.append(f"warning: tuned on {request.tune_on}, the split being reported: its figures are optimistic")
    tokens = encode_split(corpus, tokenizer, request.tune_on).tokens
    if request.tune_tokens and request.tune_tokens < len(tokens):
        tokens = tokens[: request.tune_tokens]
        source = f"{corpus.name} {request.tune_on} (its first {len(tokens):,} tokens)"
    else:
        source = f"{corpus.name} {request.tune_on} ({len(tokens):,} tokens)"
    tuning = tune_adaptive(model, tokens, cache=request.cache, dynamic=request.dynamic, stats=stats,
                           fixed=request.fixed, batch=batch, bptt=bptt, end_id=tokenizer.end_id, source=source)
    choices = [tuning.choices[name] for name, _, _ in request.methods()]
    return Plan(choices, stats, tuning, batch, bptt, warnings)


def live_adaptation(ckpt: Any, config: DynamicConfig, corpus: str | None = None) -> Any:
    """A :class:`~lmgen.adaptive.dynamic.LiveAdaptation` of a loaded checkpoint's model; its
    gradient statistics come from the checkpoint's training corpus (or ``corpus``) when it is
    first switched on."""
    from ..report import checkpoint_corpus
    from .dynamic import LiveAdaptation

    def stats() -> GradientStats:
        return training_statistics(ckpt.model, ckpt.tokenizer, checkpoint_corpus(ckpt, corpus), config)

    return LiveAdaptation(ckpt.model, config, stats)
