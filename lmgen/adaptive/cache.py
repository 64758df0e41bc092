"""The continuous cache (Grave, Joulin & Usunier 2017): recent states vote for the token that followed them.

A cache of the last N pairs (h_i, y_i): h_i is the last recurrent layer's output at
position i (what the decoder reads), y_i the token that came next. At position t::

    p_cache(w | h_t) = sum_{i in [t-N, t-1], y_i = w} exp(theta h_t . h_i) / sum_{i in [t-N, t-1]} exp(theta h_t . h_i)
    p(w)             = (1 - lambda) p_model(w | h_t) + lambda p_cache(w | h_t)

With an empty cache (the first position) p is the model's alone. Nothing is trained: N, theta
and lambda are all; theta and lambda are chosen on a validation split (:mod:`lmgen.adaptive.tune`).

Precision: the dot products run in float32 (the states are float32; BLAS), everything after
them (scaling by theta, the normalisation, the mixture and its log) in float64, so a cache
probability of 1e-30 still counts. Memory is bounded: a ring buffer of N pairs per stream.

>>> cache = NeuralCache(size=3, batch=1, hidden=2)
>>> cache.push(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[4, 5]]))
>>> p = cache.log_probs(torch.tensor([[1.0, 0.0]]), theta=1.0, vocab=6).exp()
>>> round(float(p[0, 4]), 4), round(float(p[0, 5]), 4)  # e^1 / (e^1 + e^0), e^0 / (e^1 + e^0)
(0.7311, 0.2689)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

# Query positions scored at once: the score matrix is [B, Q, N + Q] per theta.
QUERY_BLOCK = 64


@dataclass(frozen=True)
class CacheConfig:
    """A continuous cache of the last ``size`` (state, next token) pairs.

    >>> CacheConfig(size=0)
    Traceback (most recent call last):
    lmgen.errors.ConfigError: --cache must be a whole number >= 1 (pairs kept), got 0
    """

    size: int  # N: pairs kept per stream (--cache)
    theta: float = 0.3  # sharpness of the state similarity (--cache-theta)
    lam: float = 0.1  # weight of the cache in the mixture (--cache-lambda)

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 1):
            raise ConfigError(f"--cache must be a whole number >= 1 (pairs kept), got {self.size!r}")
        if not (_real(self.theta) and self.theta >= 0):
            raise ConfigError(f"--cache-theta must be a number >= 0, got {self.theta!r}")
        if not (_real(self.lam) and 0.0 <= self.lam <= 1.0):
            raise ConfigError(f"--cache-lambda must be in [0, 1], got {self.lam!r}")

    def describe(self) -> str:
        return f"N={self.size} theta={self.theta:g} lambda={self.lam:g}"


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mix(logp_model: Tensor, logp_cache: Tensor, lam: float) -> Tensor:
    """log((1 - lam) p_model + lam p_cache), float64, any shape.

    ``logp_cache`` is NaN where the cache was empty: there the model's own log-probability.
    ``lam == 0`` returns ``logp_model`` itself (exactly the plain model).
    """
    if lam == 0.0:
        return logp_model
    mixed = torch.logaddexp(logp_model + math.log1p(-lam), logp_cache + math.log(lam))
    return torch.where(torch.isnan(logp_cache), logp_model, mixed)


class NeuralCache:
    """The last ``size`` (h, next token) pairs of each of B streams, in a ring buffer.

    The streams advance together (position ``count`` is the next one for all), so one
    position per slot serves them all. ``keys`` [B, N, H] float32, ``values`` [B, N] token
    ids, ``pos`` [N] the position each slot holds (-1: empty); slot order does not matter
    (the cache is a sum over pairs).
    """

    def __init__(self, size: int, batch: int, hidden: int, device: torch.device | str = "cpu"):
        self.size = size
        self.keys = torch.zeros(batch, size, hidden, device=device)
        self.values = torch.zeros(batch, size, dtype=torch.long, device=device)
        self.pos = torch.full((size,), -1, dtype=torch.long, device=device)
        self.count = 0  # pairs pushed so far (the position of the next one)

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    def push(self, h: Tensor, y: Tensor) -> None:
        """Add the pairs of positions count .. count+T-1: h [B, T, H] and the tokens that followed, y [B, T]."""
        T = h.shape[1]
        if T == 1:  # one generation step: plain indexing, a few small copies
            slot = self.count % self.size
            self.keys[:, slot] = h[:, 0].detach()
            self.values[:, slot] = y[:, 0]
            self.pos[slot] = self.count
            self.count += 1
            return
        if T > self.size:  # only the last N can stay
            h, y = h[:, T - self.size :], y[:, T - self.size :]
            self.count += T - self.size
            T = self.size
        slots = (torch.arange(T, device=self.pos.device) + self.count) % self.size
        self.keys[:, slots] = h.detach().to(self.keys.dtype)
        self.values[:, slots] = y
        self.pos[slots] = torch.arange(self.count, self.count + T, device=self.pos.device)
        self.count += T

    def score_and_push(self, h: Tensor, y: Tensor, thetas: Sequence[float]) -> Tensor:
        """log p_cache(y_t | h_t) for positions count .. count+T-1, then push them.

        h [B, T, H], y [B, T] -> [K, B, T] float64 for the K values of theta; NaN where the
        cache is empty. Position t sees exactly the pairs of positions t-N .. t-1: those in
        the ring and the earlier ones of this call.
        """
        out = []
        for q0 in range(0, h.shape[1], QUERY_BLOCK):
            hq, yq = h[:, q0 : q0 + QUERY_BLOCK], y[:, q0 : q0 + QUERY_BLOCK]
            out.append(self._score(hq, yq, thetas))
            self.push(hq, yq)
        return torch.cat(out, dim=2)

    def _score(self, h: Tensor, y: Tensor, thetas: Sequence[float]) -> Tensor:
        B, Q, _ = h.shape
        h = h.detach().to(self.keys.dtype)
        keys = torch.cat([self.keys, h], dim=1)  # [B, N+Q, H]: the ring, then this block
        values = torch.cat([self.values, y], dim=1)  # [B, N+Q]
        where = torch.cat([self.pos, torch.arange(self.count, self.count + Q, device=self.pos.device)])  # [N+Q]
        query = torch.arange(self.count, self.count + Q, device=self.pos.device)[:, None]  # [Q, 1]
        valid = (where >= 0) & (where < query) & (where >= query - self.size)  # [Q, N+Q]
        dots = torch.bmm(h, keys.transpose(1, 2)).double()  # [B, Q, N+Q]
        hit = valid & (values[:, None, :] == y[:, :, None])  # [B, Q, N+Q]: pairs whose next token is y_t
        empty = ~valid.any(dim=-1)  # [Q]: nothing cached yet
        out = []
        for theta in thetas:
            scores = (theta * dots).masked_fill(~valid, -math.inf)
            top = scores.amax(dim=-1, keepdim=True).masked_fill(empty[:, None], 0.0)  # [B, Q, 1]
            weights = (scores - top).exp_()  # [B, Q, N+Q], <= 1: one exp serves both sums
            total = weights.sum(dim=-1)  # [B, Q]
            target = (weights * hit).sum(dim=-1)
            logp = target.log() - total.log()  # -inf where y_t is not cached
            out.append(logp.masked_fill(empty, math.nan))
        return torch.stack(out)  # [K, B, Q]

    def weights(self, h: Tensor, theta: float) -> Tensor:
        """The normalised weight of each slot for the query h [B, H]: [B, N] float64 (0 for empty slots)."""
        assert self.count > 0, "an empty cache has no distribution"
        scores = theta * torch.bmm(self.keys, h.detach().to(self.keys.dtype)[:, :, None])[:, :, 0].double()  # [B, N]
        if self.count < self.size:
            scores = scores.masked_fill(self.pos < 0, -math.inf)
        return torch.softmax(scores, dim=-1)

    def log_probs(self, h: Tensor, theta: float, vocab: int) -> Tensor | None:
        """log p_cache(w | h) for every token: h [B, H] -> [B, V] float64; None if the cache is empty."""
        if self.count == 0:
            return None
        p = torch.zeros(h.shape[0], vocab, dtype=torch.float64, device=h.device)
        return p.scatter_add_(1, self.values, self.weights(h, theta)).log()

    def select(self, index: Tensor) -> NeuralCache:
        """Rows ``index`` of the streams (a new cache; this one is unchanged)."""
        new = NeuralCache.__new__(NeuralCache)
        new.size, new.count, new.pos = self.size, self.count, self.pos.clone()
        new.keys, new.values = self.keys.index_select(0, index), self.values.index_select(0, index)
        return new


class TextCache:
    """A cache fed as a text grows, one model step at a time: generation's view of :class:`NeuralCache`.

    The model reads token x_i and outputs h_i, whose next token is only known when x_{i+1}
    is fed; so the last output waits in ``pending`` (the query for the next token) until
    then. ``seen`` counts the tokens of the text observed so far, so feeding the same
    tokens twice (a step interrupted by Ctrl-C and redone) adds them once.

    >>> cache = TextCache(CacheConfig(size=100))                 # doctest: +SKIP
    >>> cache.observe(ids[None], outputs, start=0)               # doctest: +SKIP
    >>> logp = cache.mix(logits)                                 # doctest: +SKIP
    """

    def __init__(self, config: CacheConfig):
        self.config = config
        self.ring: NeuralCache | None = None
        self.pending: Tensor | None = None  # [B, H]: the output whose next token is not known yet
        self.seen = 0

    def observe(self, inputs: Tensor, outputs: Tensor, start: int) -> None:
        """Tokens ``inputs`` [B, T] (the text's tokens start .. start+T-1) fed, giving ``outputs`` [B, T, H]."""
        skip = self.seen - start
        assert skip >= 0, f"the cache missed tokens {self.seen} .. {start - 1} of the text"
        inputs, outputs = inputs[:, skip:], outputs[:, skip:]
        if inputs.shape[1] == 0:
            return
        if self.ring is None:
            B, _, H = outputs.shape
            self.ring = NeuralCache(self.config.size, B, H, outputs.device)
        if self.pending is None:  # the text's first token: it follows no state
            self.ring.push(outputs[:, :-1], inputs[:, 1:])
        elif inputs.shape[1] == 1:  # a generation step
            self.ring.push(self.pending[:, None], inputs)
        else:
            self.ring.push(torch.cat([self.pending[:, None], outputs[:, :-1]], dim=1), inputs)
        self.pending = outputs[:, -1].detach()
        self.seen = start + skip + inputs.shape[1]

    def mix(self, logits: Tensor) -> Tensor:
        """Next-token logits [B, V] -> the mixture's log-probabilities [B, V] (float64).

        The logits themselves where the mixture is the model's alone: lambda 0 or an empty cache.
        """
        lam = self.config.lam
        if lam == 0.0 or self.ring is None or self.pending is None or self.ring.count == 0:
            return logits
        # (1 - lam) p_model + lam p_cache in probability space: the cache's weights added where their tokens are
        p = torch.softmax(logits.double(), dim=-1).mul_(1.0 - lam)  # [B, V]
        p.scatter_add_(1, self.ring.values, self.ring.weights(self.pending, self.config.theta).mul_(lam))
        return p.log_()

    def repeat(self, batch: int) -> TextCache:
        """One row copied ``batch`` times (several samples from one text), a new cache."""
        return self.select(torch.zeros(batch, dtype=torch.long))

    def select(self, index: Tensor) -> TextCache:
        """Rows ``index`` (finished samples leaving the batch), a new cache."""
        new = TextCache(self.config)
        new.seen = self.seen
        if self.ring is not None:
            index = index.to(self.ring.keys.device)
            new.ring = self.ring.select(index)
        if self.pending is not None:
            new.pending = self.pending.index_select(0, index.to(self.pending.device))
        return new
