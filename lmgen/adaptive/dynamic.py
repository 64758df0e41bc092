"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic evaluation of neural
sequence models", ICML): the model takes a gradient step on each segment of the text after
scoring it, so patterns that recur in the text become more likely.

The text is cut into segments s_1, s_2, ... of T tokens (``--dyn-segment``). Segment s_i is
**scored first** with the weights theta_{i-1}; then, with g_i the gradient of its mean
cross-entropy, every weight takes their "RMS with decay" step (section 5 of the paper)::

    theta_i = theta_{i-1} - eta g_i / (sqrt(MS_g) + eps) + lambda RMS_norm (theta_0 - theta_{i-1})

    MS_g     = mean over N_b training batches of g_train^2    (per weight, collected once)
    RMS_norm = sqrt(MS_g) / mean over all weights of sqrt(MS_g), with lambda RMS_norm clipped at 1

theta_0 are the trained weights: the decay pulls the adapted weights back towards them,
more strongly for weights whose gradients were large in training. MS_g is the paper's own
choice, squared gradients on the training data (:func:`gradient_statistics`), here from
``stats_tokens`` training tokens in batches of ``stats_batch`` streams x T tokens (the
paper's code, benkrause/dynamic-evaluation, uses the whole training split in batches of
100 x T). The hidden state is carried from segment to segment, as in the paper.

The model passed in is never changed: :class:`Adapter` works on its own copy of the weights,
and :meth:`Adapter.reset` puts the trained weights back bit for bit.

Cost: a segment's forward pass also serves its backward pass, then one update touches every
weight. For a word-level model with an untied embedding only the rows of the tokens read
change by gradient; the decay of the others is applied lazily (``(1 - c)^k`` when a row is
next read, see :meth:`Adapter._catch_up_rows`), so an update costs the decoder and the
recurrent layers, not the V x E input embedding.

>>> stats = gradient_statistics(model, train_tokens, DynamicConfig())      # doctest: +SKIP
>>> adapter = Adapter(model, stats, DynamicConfig(lr=1e-4))                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..model import RNNLM, detach_state


@dataclass(frozen=True)
class DynamicConfig:
    """Dynamic evaluation's settings (flag names in the messages).

    >>> DynamicConfig(segment=0)
    Traceback (most recent call last):
    lmgen.errors.ConfigError: --dyn-segment must be a whole number >= 1, got 0
    """

    lr: float = 1e-4  # eta (--dyn-lr)
    decay: float = 0.02  # lambda, the pull towards the trained weights per update (--dyn-decay)
    segment: int = 20  # T: tokens scored, then learned, at a time (--dyn-segment)
    eps: float = 2e-5  # added to sqrt(MS_g): bounds the step of weights with tiny training gradients
    stats_tokens: int = 100_000  # training tokens for MS_g (--dyn-stats-tokens)
    stats_batch: int = 64  # streams per MS_g batch

    def __post_init__(self) -> None:
        for name, flag in (("lr", "--dyn-lr"), ("decay", "--dyn-decay"), ("eps", "DynamicConfig.eps")):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= 0):
                raise ConfigError(f"{flag} must be a number >= 0, got {value!r}")
        for name, flag in (("segment", "--dyn-segment"), ("stats_tokens", "--dyn-stats-tokens"),
                           ("stats_batch", "DynamicConfig.stats_batch")):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"{flag} must be a whole number >= 1, got {value!r}")

    def replace(self, **changes: Any) -> DynamicConfig:
        return replace(self, **changes)

    def describe(self) -> str:
        return f"lr={self.lr:g} decay={self.decay:g} segment={self.segment}"


@dataclass
class GradientStats:
    """sqrt(MS_g) per weight (in ``model.parameters()`` order) and what it was measured on."""

    rms: list[Tensor]
    batches: int
    tokens: int


def _no_cudnn(device: torch.device):
    """cuDNN computes RNN gradients only in training mode; evaluation mode (no dropout) needs ATen's kernels."""
    return torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else nullcontext()


def _check_model(model: Any) -> None:
    if not isinstance(model, torch.nn.Module) or not list(model.parameters()):
        raise ConfigError("dynamic evaluation needs a neural model with weights (not an n-gram LM)")


def gradient_statistics(model: torch.nn.Module, tokens: np.ndarray, config: DynamicConfig) -> GradientStats:
    """MS_g on training tokens: the mean squared gradient of each weight over batches of the
    mean cross-entropy of ``stats_batch`` streams x ``segment`` tokens, state carried.

    The streams start evenly spaced through ``tokens`` (the whole training split, not only
    its start), each reading ``stats_tokens / stats_batch`` tokens. The model is unchanged.
    """
    _check_model(model)
    tokens = np.asarray(tokens)
    T = config.segment
    B = max(1, min(config.stats_batch, (len(tokens) - 1) // (T + 1)))
    per_stream = max(T, min(config.stats_tokens // B, (len(tokens) - 1) // B)) // T * T
    if per_stream < T or len(tokens) < 2:
        raise ConfigError(f"the training split has too few tokens ({len(tokens)}) for gradient statistics")
    starts = np.arange(B) * ((len(tokens) - 1 - per_stream) // max(B - 1, 1) if B > 1 else 0)
    rows = np.stack([tokens[s : s + per_stream + 1] for s in starts]).astype(np.int64)  # [B, per_stream + 1]
    params = list(model.parameters())
    device = params[0].device
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()
    state, batches = None, 0
    try:
        with _no_cudnn(device):
            for t0 in range(0, per_stream, T):
                x = torch.from_numpy(rows[:, t0 : t0 + T]).to(device)
                y = torch.from_numpy(rows[:, t0 + 1 : t0 + T + 1]).to(device)
                with torch.enable_grad():
                    logits, state = model(x, state)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                state = detach_state(state)
                for s, g in zip(sums, grads):
                    if g is not None:
                        s.add_(g.to_dense().float().square())
                batches += 1
    finally:
        model.train(was_training)
    rms = [(s / batches).sqrt_() for s in sums]
    return GradientStats(rms, batches, batches * B * T)


class Adapter:
    """The weights dynamic evaluation adapts: a copy of ``model`` that steps after each segment.

    :meth:`forward` runs a segment with gradients (its logits serve both the score and the
    step), :meth:`step` takes the update on that segment's loss, :meth:`reset` restores the
    trained weights bit for bit. ``model`` itself is never changed (``copy_model=False`` adapts it
    in place instead; :meth:`reset` still restores it).

    The update is two passes over each weight: theta <- keep theta + (1 - keep) theta_0, then
    theta <- theta - rate g (keep = 1 - lambda RMS_norm, rate = eta / (sqrt(MS_g) + eps)).
    With a zero learning rate no gradient is taken and every weight stays exactly theta_0.
    """

    def __init__(self, model: torch.nn.Module, stats: GradientStats, config: DynamicConfig, *, copy_model: bool = True):
        _check_model(model)
        self.config = config
        self.model = copy.deepcopy(model) if copy_model else model
        self.params = list(self.model.parameters())
        if len(stats.rms) != len(self.params) or any(r.shape != p.shape for r, p in zip(stats.rms, self.params)):
            raise ConfigError("the gradient statistics are of another model (their shapes differ)")
        with torch.no_grad():
            self.theta0 = [p.detach().clone() for p in self.params]
            count = sum(r.numel() for r in stats.rms)
            mean_rms = float(sum(float(r.double().sum()) for r in stats.rms) / count) or 1.0
            # per weight: the fraction of delta kept by the decay (1 - lambda RMS_norm, >= 0), and eta / (RMS + eps)
            self.keep = [1.0 - (config.decay * r / mean_rms).clamp(max=1.0) for r in stats.rms]
            self.rate = [config.lr / (r + config.eps) for r in stats.rms]
            # theta_i = keep theta_{i-1} + (1 - keep) theta_0 - rate g: the constant part, once
            self.anchor = [(1.0 - k) * p0 for k, p0 in zip(self.keep, self.theta0)]
        self.updates = 0
        self.lazy = self._lazy_embedding()

    def _lazy_embedding(self) -> int | None:
        """Index of the embedding in ``params`` when its rows can decay lazily (an untied RNNLM embedding)."""
        m = self.model
        if not isinstance(m, RNNLM) or m.config.tie or m.config.dropout_embed > 0:
            return None
        index = next(i for i, p in enumerate(self.params) if p is m.embedding.weight)
        m.embedding.sparse = True  # gradients of the rows read only
        self.row_clock = torch.zeros(m.embedding.weight.shape[0], dtype=torch.long, device=self.params[0].device)
        return index

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def learning(self) -> bool:
        """False with a zero learning rate: no step can move a weight (delta stays 0), so no gradients are taken."""
        return self.config.lr > 0

    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any, Tensor]:
        """tokens x [B, T] -> logits [B, T, V] (with gradients), the state after x, outputs h [B, T, H]."""
        if self.lazy is not None:
            self._catch_up_rows(x.flatten())
        self.model.eval()
        with torch.enable_grad() if self.learning else torch.no_grad(), _no_cudnn(self.device):
            logits, state, (outputs, _) = self.model(x, state, return_outputs=True)
        return logits, detach_state(state), outputs.detach()

    def step(self, loss: Tensor) -> None:
        """One update on the gradient of ``loss`` (a segment's mean cross-entropy); none if it is not finite."""
        if not self.learning or not torch.isfinite(loss):  # skipped whole, decay included (as training skips)
            return
        with _no_cudnn(self.device):
            grads = list(torch.autograd.grad(loss, self.params, allow_unused=True))
        with torch.no_grad():
            dense = [i for i in range(len(self.params)) if i != self.lazy]
            for i in dense:  # the decay towards theta_0, one pass
                torch.addcmul(self.anchor[i], self.keep[i], self.params[i], out=self.params[i])
            moved = [i for i in dense if grads[i] is not None]
            torch._foreach_addcmul_([self.params[i] for i in moved], [self.rate[i] for i in moved],
                                    [grads[i] for i in moved], value=-1.0)
            if self.lazy is not None and grads[self.lazy] is not None:
                self._step_rows(grads[self.lazy].coalesce())
        self.updates += 1

    def _catch_up_rows(self, tokens: Tensor) -> None:
        """Bring the embedding rows of ``tokens`` up to date: the decays of the updates since each was last written."""
        rows = torch.unique(tokens)
        i = self.lazy
        lag = (self.updates - self.row_clock[rows]).to(self.keep[i].dtype)[:, None]  # [n, 1]
        if bool((lag > 0).any()):
            with torch.no_grad():
                base = self.theta0[i][rows]
                self.params[i][rows] = base + self.keep[i][rows].pow(lag) * (self.params[i][rows] - base)
        self.row_clock[rows] = self.updates

    def _step_rows(self, grad: Tensor) -> None:
        """The update of the embedding rows that have a gradient (the rows just read, already current)."""
        i = self.lazy
        rows, g = grad.indices()[0], grad.values()
        theta = self.anchor[i][rows] + self.keep[i][rows] * self.params[i][rows] - self.rate[i][rows] * g
        self.params[i][rows] = theta
        self.row_clock[rows] = self.updates + 1

    def sync(self) -> None:
        """Bring every weight up to date (the lazy embedding rows too): before generating with ``self.model``."""
        if self.lazy is not None:
            self._catch_up_rows(torch.arange(self.row_clock.shape[0], device=self.row_clock.device))

    def reset(self) -> None:
        """The trained weights again, bit for bit; the adaptation is forgotten."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self.theta0):
                p.copy_(p0)
        self.updates = 0
        if self.lazy is not None:
            self.row_clock.zero_()

    def learn_text(self, ids: list[int], end_id: int = 0) -> int:
        """Dynamic-evaluation steps on a text as one document: ``[END] + ids``, segment by segment,
        state carried from the zero state. Returns the number of steps taken."""
        if not ids:
            return 0
        seq = torch.tensor([[end_id] + list(ids)], dtype=torch.long, device=self.device)  # [1, n+1]
        T, state, steps = self.config.segment, None, 0
        for t0 in range(0, seq.shape[1] - 1, T):
            x, y = seq[:, t0 : t0 + T], seq[:, t0 + 1 : t0 + T + 1]
            logits, state, _ = self.forward(x[:, : y.shape[1]], state)
            self.step(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
            steps += 1
        self.sync()
        return steps


class LiveAdaptation:
    """Dynamic evaluation on the text typed into a session (``lmgen repl --adapt``, ``:adapt``).

    While on, each text :meth:`learn` is given makes the weights take dynamic-evaluation
    steps on it, so generation leans towards it; the model passed in is never changed (a
    copy adapts, made when first switched on). ``stats`` is a :class:`GradientStats` or a
    function that computes it (called once, when first needed: it reads training text).

    >>> live = LiveAdaptation(model, DynamicConfig(), lambda: training_statistics(...))  # doctest: +SKIP
    >>> live.switch(True); live.learn(tokenizer.encode("Some text in a style."))         # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, config: DynamicConfig, stats: Any):
        self.original = model
        self.config = config
        self.stats = stats
        self.adapter: Adapter | None = None
        self.on = False
        self.steps = 0

    @property
    def model(self) -> torch.nn.Module:
        """The weights to generate with: the adapted copy once there is one."""
        return self.adapter.model if self.adapter is not None else self.original

    def switch(self, on: bool) -> None:
        """Start (computing the gradient statistics the first time) or stop learning; the weights stay as they are."""
        if on and self.adapter is None:
            if callable(self.stats):
                self.stats = self.stats()
            if self.stats is None:
                raise ConfigError("adapting needs gradient statistics of the training data (MS_g); "
                                  "pass stats to the session")
            self.adapter = Adapter(self.original, self.stats, self.config)
        self.on = on

    def learn(self, ids: list[int], end_id: int = 0) -> int:
        """Steps on ``ids`` as a document, if on; returns how many were taken."""
        if not self.on or self.adapter is None or not ids:
            return 0
        steps = self.adapter.learn_text(ids, end_id)
        self.steps += steps
        return steps

    def reset(self) -> None:
        """The trained weights again, bit for bit (learning stays on or off as it was)."""
        if self.adapter is not None:
            self.adapter.reset()
        self.steps = 0

    def describe(self) -> str:
        state = "on" if self.on else "off"
        return f"adapt {state} ({self.steps} steps taken, lr {self.config.lr:g}, decay {self.config.decay:g})"
