"""Choosing theta, lambda (cache) and the learning rate and decay (dynamic evaluation) on a
validation split: a small grid, never the split that is reported.

One pass over the split scores the whole (theta, lambda) grid at once (:func:`score_pass`),
so the cache costs one pass; dynamic evaluation needs one pass per (lr, decay):

1. lr in {1/4, 1/2, 1, 2, 4} x the given lr, at the given decay (extended by up to three
   halvings or doublings while the best lr is at an end of the grid);
2. decay in {1/2, 2} x the given decay, at the best lr of step 1.

Each dynamic pass also scores the cache grid, so "both" is the best (lr, decay, theta, lambda)
seen. A value given explicitly (``fixed``) is not searched. The grid and every figure come
back in :class:`Tuning` (``--json``), with the split they were measured on.

>>> tuning = tune_adaptive(model, valid_tokens, cache=CacheConfig(500), source="ptb valid")  # doctest: +SKIP
>>> tuning.choices["cache"].cache                                                           # doctest: +SKIP
CacheConfig(size=500, theta=0.3, lam=0.1)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Collection

import numpy as np

from .cache import CacheConfig
from .dynamic import Adapter, DynamicConfig, GradientStats
from .score import PassResult, score_pass

THETAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
LAMBDAS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
DECAY_FACTORS = (0.25, 0.5, 2.0)  # 0.25: on PTB the best decay was 0.005 (docs/adaptive.md)
EDGE_STEPS = 3  # extra lr passes when the best is at an end of the grid
TUNABLE = ("theta", "lambda", "lr", "decay")


@dataclass
class Choice:
    """A method's chosen settings and its figure on the tuning split."""

    method: str  # "cache", "dynamic" or "cache+dynamic"
    cache: CacheConfig | None
    dynamic: DynamicConfig | None
    nll: float  # on the tuning split, nats
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nll / max(self.tokens, 1), 700.0))


@dataclass
class Tuning:
    """What :func:`tune_adaptive` chose, from what, on which split."""

    source: str  # e.g. "ptb valid (73,760 tokens)"
    tuned: list[str]  # the hyper-parameters searched (the others were given)
    choices: dict[str, Choice] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)  # every grid point and its perplexity
    plain_perplexity: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "tuned": self.tuned, "seconds": self.seconds,
                "plain_perplexity": self.plain_perplexity,
                "chosen": {m: {"perplexity": c.perplexity, **_values(c.cache, c.dynamic)}
                           for m, c in self.choices.items()},
                "tried": self.tried}


def _values(cache: CacheConfig | None, dynamic: DynamicConfig | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if cache:
        out.update(theta=cache.theta, **{"lambda": cache.lam})
    if dynamic:
        out.update(lr=dynamic.lr, decay=dynamic.decay)
    return out


def tune_adaptive(
    model: Any,
    tokens: np.ndarray,
    *,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    stats: GradientStats | None = None,
    fixed: Collection[str] = (),
    batch: int = 1,
    bptt: int = 256,
    end_id: int = 0,
    source: str = "",
) -> Tuning:
    """Grid-search the methods asked for (``cache`` and/or ``dynamic``; their values are the
    grid's centre, or held when named in ``fixed``) on ``tokens``, a validation split.

    Only ``tokens`` (and, through ``stats``, the training split) are read.
    """
    unknown = set(fixed) - set(TUNABLE)
    assert not unknown, f"not tunable: {unknown}"
    start = time.perf_counter()
    N = len(tokens)
    tuning = Tuning(source or f"{N:,} tokens", [])
    thetas, lambdas = (), ()
    if cache:
        thetas = (cache.theta,) if "theta" in fixed else THETAS
        lambdas = (cache.lam,) if "lambda" in fixed else LAMBDAS
        tuning.tuned += [n for n in ("theta", "lambda") if n not in fixed]
    grid = dict(cache_size=cache.size if cache else 0, thetas=thetas, lambdas=lambdas,
                batch=batch, bptt=bptt, end_id=end_id)

    def run(config: DynamicConfig | None) -> PassResult:
        adapter = Adapter(model, stats, config) if config is not None else None
        result = score_pass(model, tokens, adapter=adapter, **grid)
        point = _values(None, config)
        tuning.tried.append({**point, "perplexity": _ppl(result.nll_model, N)})
        if result.nll_grid is not None:
            for k, theta in enumerate(thetas):
                for j, lam in enumerate(lambdas):
                    tuning.tried.append({**point, "theta": theta, "lambda": lam,
                                         "perplexity": _ppl(float(result.nll_grid[k, j]), N)})
        return result

    if cache:
        static = run(None)
        theta, lam, nll = static.best()
        tuning.plain_perplexity = _ppl(static.nll_model, N)
        tuning.choices["cache"] = Choice("cache", CacheConfig(cache.size, theta, lam), None, nll, N)
    if dynamic:
        _tune_dynamic(dynamic, fixed, run, tuning, cache, N)
    tuning.seconds = time.perf_counter() - start
    return tuning


def _tune_dynamic(dynamic: DynamicConfig, fixed: Collection[str], run: Any, tuning: Tuning,
                  cache: CacheConfig | None, N: int) -> None:
    """Coordinate search: lr at the given decay, then decay at the best lr; records both choices."""
    tuning.tuned += [n for n in ("lr", "decay") if n not in fixed]
    passes: list[tuple[DynamicConfig, PassResult]] = []
    lrs = [dynamic.lr] if "lr" in fixed else [dynamic.lr * f for f in LR_FACTORS]
    for lr in lrs:
        passes.append((dynamic.replace(lr=lr), run(dynamic.replace(lr=lr))))
    for _ in range(EDGE_STEPS if len(lrs) > 1 else 0):  # the best at an end of the grid: look one step further
        best = min(passes, key=lambda p: p[1].nll_model)[0]
        tried = sorted(c.lr for c, _ in passes)
        if best.lr not in (tried[0], tried[-1]) or best.lr == 0:
            break
        lr = best.lr * (2.0 if best.lr == tried[-1] else 0.5)
        passes.append((dynamic.replace(lr=lr), run(dynamic.replace(lr=lr))))
    best = min(passes, key=lambda p: p[1].nll_model)[0]
    if "decay" not in fixed:
        for factor in DECAY_FACTORS:
            config = best.replace(decay=dynamic.decay * factor)
            passes.append((config, run(config)))
    config, result = min(passes, key=lambda p: p[1].nll_model)
    tuning.choices["dynamic"] = Choice("dynamic", None, config, result.nll_model, N)
    if cache:
        scored = [(r.best(), c) for c, r in passes]
        (theta, lam, nll), config = min(scored, key=lambda s: s[0][2])
        tuning.choices["cache+dynamic"] = Choice("cache+dynamic", CacheConfig(cache.size, theta, lam), config, nll, N)


def _ppl(nll: float, n: int) -> float:
    return math.exp(min(nll / max(n, 1), 700.0))
