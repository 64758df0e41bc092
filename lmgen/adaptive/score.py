"""One pass over a text with the cache and/or dynamic evaluation: :func:`score_pass`, and
:func:`evaluate_adaptive`, its :class:`~lmgen.evaluate.EvalResult`.

The layout is :func:`lmgen.evaluate.stream_layout`'s: every token of the text is a target,
``[END]`` included, the first predicted after an ``[END]``; ``batch=1`` is one stream (the
exact mode), B > 1 runs B contiguous streams side by side. With a cache each stream has its
own. With dynamic evaluation the B streams share one set of adapting weights: after the
segments at the same offset of every stream are scored, one step on their mean loss.
Every token is still scored before any step that saw it, but a stream also learns from the
others' earlier segments, which lie later in the text; ``batch=1`` is the paper's setting.

A pass can score a grid of cache settings at once (the cache's cost is small next to the
model's): K values of theta x L of lambda, summed per pair, for :mod:`lmgen.adaptive.tune`.

>>> r = evaluate_adaptive(model, tokens, cache=CacheConfig(500), batch=1)  # doctest: +SKIP
>>> r.perplexity  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..evaluate import EvalResult, _device_of, model_label, stream_layout, stream_windows
from ..model import detach_state
from .cache import CacheConfig, NeuralCache, mix
from .dynamic import Adapter, DynamicConfig, GradientStats


@dataclass
class PassResult:
    """What :func:`score_pass` summed: nats, over ``tokens`` targets."""

    tokens: int
    nll_model: float  # the (adapting) model alone
    nll_grid: np.ndarray | None  # [K, L]: with the cache, for thetas[k] and lambdas[l]
    thetas: tuple[float, ...] = ()
    lambdas: tuple[float, ...] = ()
    seconds: float = 0.0
    # record=True: per target, in text order: "model" [N] and "cache" [K, N] log-probabilities (NaN: empty cache)
    per_token: dict[str, np.ndarray] = field(default_factory=dict)

    def best(self) -> tuple[float, float, float]:
        """(theta, lambda, nll) of the grid's lowest sum."""
        assert self.nll_grid is not None
        k, j = np.unravel_index(int(np.argmin(self.nll_grid)), self.nll_grid.shape)
        return self.thetas[k], self.lambdas[j], float(self.nll_grid[k, j])


def score_pass(
    model: Any,
    tokens: np.ndarray,
    *,
    batch: int = 1,
    bptt: int = 256,
    end_id: int = 0,
    cache_size: int = 0,
    thetas: Sequence[float] = (),
    lambdas: Sequence[float] = (),
    adapter: Adapter | None = None,
    record: bool = False,
) -> PassResult:
    """Score ``tokens`` once: the model (adapting if ``adapter`` is given: ``adapter.model``
    is run, segment by segment, each scored before its step) and, if ``cache_size`` > 0, the
    cache mixture for every (theta, lambda) of the grid.
    """
    tokens = np.asarray(tokens)
    N = int(tokens.shape[0])
    thetas, lambdas = tuple(thetas), tuple(lambdas)
    if cache_size and not (thetas and lambdas):
        raise ValueError("a cache pass needs at least one theta and one lambda")
    if N == 0:
        return PassResult(0, 0.0, np.zeros((len(thetas), len(lambdas))) if cache_size else None, thetas, lambdas)
    inputs, targets, valid = stream_layout(tokens, batch, end_id)
    B, L = inputs.shape
    net = adapter.model if adapter is not None else model
    window = adapter.config.segment if adapter is not None else bptt
    device = _device_of(net)
    ring: NeuralCache | None = None
    grid = np.zeros((len(thetas), len(lambdas))) if cache_size else None
    rec_model = np.full((B, L), np.nan) if record else None
    rec_cache = np.full((len(thetas), B, L), np.nan) if record and cache_size else None
    nll_model, state = 0.0, None
    was_training = getattr(net, "training", False)
    net.eval()
    start = time.perf_counter()
    try:
        for t0, x, y, mask in stream_windows(inputs, targets, valid, window, device):  # x, y, mask [B, T]
            if adapter is not None:
                logits, state, h = adapter.forward(x, state)
            elif cache_size:
                with torch.no_grad():
                    logits, state, (h, _) = net(x, state, return_outputs=True)
            else:
                with torch.no_grad():
                    logits, state = net(x, state)
            with torch.no_grad():  # the score: before any step on this segment
                logp = torch.log_softmax(logits.detach().double(), dim=-1).gather(-1, y[..., None])[..., 0]  # [B, T]
            nll_model -= float(logp[mask].sum())
            if record:
                rec_model[:, t0 : t0 + window] = logp.cpu().numpy()
            if adapter is not None:  # then learn it: the mean cross-entropy of the segment's real targets
                ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
                adapter.step(ce[mask.flatten()].mean())
            if cache_size:
                if ring is None:
                    ring = NeuralCache(cache_size, B, h.shape[-1], device)
                with torch.no_grad():
                    logp_cache = ring.score_and_push(h, y, thetas)  # [K, B, T]
                for k in range(len(thetas)):
                    for j, lam in enumerate(lambdas):
                        grid[k, j] -= float(mix(logp, logp_cache[k], lam)[mask].sum())
                if rec_cache is not None:
                    rec_cache[:, :, t0 : t0 + window] = logp_cache.cpu().numpy()
            state = detach_state(state)
    finally:
        net.train(was_training)
    result = PassResult(N, nll_model, grid, thetas, lambdas, time.perf_counter() - start)
    if record:
        flat = valid.reshape(-1)
        result.per_token["model"] = rec_model.reshape(-1)[flat]
        if rec_cache is not None:
            result.per_token["cache"] = rec_cache.reshape(len(thetas), -1)[:, flat]
    return result


def evaluate_adaptive(
    model: Any,
    tokens: np.ndarray,
    *,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    stats: GradientStats | None = None,
    batch: int = 1,
    bptt: int = 256,
    end_id: int = 0,
    unk_id: int = 1,
    chars: int = 0,
    num_bytes: int = 0,
    label: str = "",
) -> EvalResult:
    """Score ``tokens`` with the continuous cache, dynamic evaluation, or both (neither: the plain model).

    ``stats`` (:func:`~lmgen.adaptive.dynamic.gradient_statistics` on training tokens) is
    needed for ``dynamic``. ``model`` is never changed (dynamic evaluation adapts a copy).

    >>> stats = gradient_statistics(model, train_tokens, DynamicConfig())          # doctest: +SKIP
    >>> evaluate_adaptive(model, test_tokens, cache=CacheConfig(500), dynamic=DynamicConfig(),
    ...                   stats=stats, batch=1).perplexity                          # doctest: +SKIP
    """
    if dynamic is not None and stats is None:
        raise ConfigError("dynamic evaluation needs gradient statistics: "
                          "stats = gradient_statistics(model, train_tokens, config)")
    adapter = Adapter(model, stats, dynamic) if dynamic is not None else None
    kw = dict(cache_size=cache.size, thetas=[cache.theta], lambdas=[cache.lam]) if cache else {}
    result = score_pass(model, tokens, batch=batch, bptt=bptt, end_id=end_id, adapter=adapter, **kw)
    nll = float(result.nll_grid[0, 0]) if cache else result.nll_model
    tokens = np.asarray(tokens)
    B = stream_layout(tokens, batch, end_id)[0].shape[0] if len(tokens) else 1
    return EvalResult(
        tokens=result.tokens, nll=nll, end_tokens=int(np.count_nonzero(tokens == end_id)),
        unknown=int(np.count_nonzero(tokens == unk_id)), chars=chars, num_bytes=num_bytes, batch=B,
        bptt=dynamic.segment if dynamic else bptt, seconds=result.seconds,
        label=label or method_label(model, cache, dynamic),
        extra=method_extra(cache, dynamic),
    )


def method_label(model: Any, cache: CacheConfig | None, dynamic: DynamicConfig | None) -> str:
    """e.g. "LSTM 2x200 + cache + dynamic"."""
    parts = [model_label(model)] + (["cache"] if cache else []) + (["dynamic"] if dynamic else [])
    return " + ".join(parts)


def method_extra(cache: CacheConfig | None, dynamic: DynamicConfig | None) -> dict[str, Any]:
    """The settings of a result, for ``--json``."""
    extra: dict[str, Any] = {"method": "+".join((["cache"] if cache else []) + (["dynamic"] if dynamic else []))
                             or "plain"}
    if cache:
        extra["cache"] = {"size": cache.size, "theta": cache.theta, "lambda": cache.lam}
    if dynamic:
        extra["dynamic"] = {"lr": dynamic.lr, "decay": dynamic.decay, "segment": dynamic.segment, "eps": dynamic.eps,
                            "stats_tokens": dynamic.stats_tokens, "stats_batch": dynamic.stats_batch}
    return extra
