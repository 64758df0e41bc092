"""Interpolated modified Kneser-Ney n-gram language model (Chen & Goodman 1998), numpy only.

The baseline the RNN is compared against, trained on the same token ids (the training
split as :func:`lmgen.data.encode_split` writes it, ``[END]`` between documents) and
scored by the same evaluator. The token stream is one long sequence: n-grams run across
``[END]``, which thus plays the part of the sentence-start symbol ``<s>``.

For order k (1..n), history h (the last k-1 tokens) and token w::

    p_k(w | h) = max(c_k(h w) - D_k(c), 0) / c_k(h .)  +  gamma_k(h) * p_{k-1}(w | h')
    gamma_k(h) = (D_k1 N1(h .) + D_k2 N2(h .) + D_k3 N3+(h .)) / c_k(h .)
    p_0(w)     = 1 / V                              (so every token has mass, <unk> too)

where h' drops the oldest token of h, c_n is the raw count, and c_k (k < n) the
continuation count N1+(. h w): how many distinct tokens precede ``h w``. A history never
seen (c_k(h .) = 0) passes p_{k-1} through unchanged. The discounts D_k1, D_k2, D_k3+ come
from the count-of-counts n1..n4 of order k: Y = n1 / (n1 + 2 n2), D_kc = c - (c+1) Y n_{c+1} / n_c.

N-grams are stored as sorted int64 keys, ``id(prefix) * V + w``, where the id of a
(k-1)-gram is its index in the sorted keys of order k-1 (the id of a 1-gram is the token
id): exact, no hashing, any vocabulary size.

>>> lm = NgramLM.fit(np.array([2, 3, 2, 3, 0]), order=2, vocab_size=4)
>>> round(float(lm.distribution(np.array([[2]])).sum()), 6)
1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def modified_kn_discounts(counts: np.ndarray) -> np.ndarray:
    """D1, D2, D3+ of Chen & Goodman from an array of (positive) n-gram counts.

    Where an estimate falls outside (0, c] (tiny corpora, where some count-of-count is
    zero) it becomes the plain KN discount Y = n1 / (n1 + 2 n2) (0.5 when undefined):
    D_c > 0 keeps some mass for lower orders, so no token ever gets probability 0, and
    D_c <= c keeps every numerator >= 0.
    """
    n = [int(np.count_nonzero(counts == c)) for c in (1, 2, 3, 4)]
    Y = n[0] / (n[0] + 2 * n[1]) if n[0] > 0 else 0.5
    discounts = []
    for c in (1, 2, 3):
        d = c - (c + 1) * Y * n[c] / n[c - 1] if n[c - 1] > 0 else 0.0
        discounts.append(d if 0.0 < d <= c else Y)
    return np.array(discounts)


class NgramLM:
    """An order-n interpolated Kneser-Ney LM over token ids 0..V-1.

    Use it like an :class:`~lmgen.model.RNNLM`: ``logits, state = lm(tokens[B, T], state)``
    returns log-probabilities [B, T, V] (as "logits": ``log_softmax`` leaves them as they
    are); the state is the last n-1 token ids, [n-1, B], initially ``[END]``. The evaluator
    uses :meth:`target_log_probs`, which never builds [B, T, V].

    >>> lm = NgramLM.fit(train_tokens, order=5, vocab_size=tokenizer.vocab_size)  # doctest: +SKIP
    >>> evaluate_tokens(lm, test_tokens, batch=1).perplexity  # doctest: +SKIP
    """

    training = False

    def __init__(self, order: int, vocab_size: int, end_id: int = 0):
        if order < 1:
            raise ValueError(f"an n-gram order must be >= 1, got {order}")
        self.order, self.V, self.end_id = order, vocab_size, end_id
        # Per order k (index k-1): sorted keys (None for k = 1: the key is the token id),
        # counts c_k per key, context totals c_k(h .) and gamma_k(h) per history id, discounts.
        self.keys: list[np.ndarray | None] = []
        self.counts: list[np.ndarray] = []
        self.totals: list[np.ndarray] = []
        self.gammas: list[np.ndarray] = []
        self.discounts: list[np.ndarray] = []

    @property
    def label(self) -> str:
        return f"{self.order}-gram KN"

    # -- training ------------------------------------------------------------------

    @classmethod
    def fit(cls, tokens: np.ndarray, order: int, vocab_size: int, end_id: int = 0,
            discounts: list[float] | None = None) -> "NgramLM":
        """Count the n-grams of ``tokens`` ([N] ids) and set the smoothing.

        ``discounts`` (one D per order, lowest first) replaces the modified-KN estimates
        with plain interpolated absolute discounting (D for every count): for checks by hand.
        """
        lm = cls(order, vocab_size, end_id)
        t = np.asarray(tokens, dtype=np.int64)
        N, V = len(t), vocab_size
        if N == 0:
            raise ValueError("cannot fit an n-gram model on no tokens")
        if t.min() < 0 or t.max() >= V:
            raise ValueError(f"token ids must be in [0, {V}), got {t.min()}..{t.max()}")
        # ids[k-1][i]: id of the k-gram ending at position i (-1 where i < k-1).
        ids: list[np.ndarray] = [t]
        raw: list[np.ndarray] = [np.bincount(t, minlength=V)]
        lm.keys.append(None)
        for k in range(2, order + 1):
            prev = ids[-1]
            key = prev[k - 2 : N - 1] * V + t[k - 1 :]  # (k-1)-gram ending at i-1, then t[i]
            uniq, inverse = np.unique(key, return_inverse=True)
            pos = np.full(N, -1, dtype=np.int64)
            pos[k - 1 :] = inverse
            ids.append(pos)
            lm.keys.append(uniq)
            raw.append(np.bincount(inverse, minlength=len(uniq)))
        for k in range(1, order + 1):
            if k == order:
                count = raw[k - 1]
            else:
                # Continuation count of each k-gram: the distinct (k+1)-grams it ends.
                upper = ids[k][k:]
                _, first = np.unique(upper, return_index=True)
                suffix = ids[k - 1][k:][first]  # the k-gram each distinct (k+1)-gram ends with
                count = np.bincount(suffix, minlength=len(raw[k - 1]))
            if discounts is not None:
                D = np.full(3, float(discounts[k - 1]))
            else:
                D = modified_kn_discounts(count[count > 0])
            history = np.zeros(len(count), dtype=np.int64) if k == 1 else lm.keys[k - 1] // V
            n_hist = 1 if k == 1 else len(raw[k - 2])
            total = np.bincount(history, weights=count, minlength=n_hist)
            mass = np.bincount(history, weights=lm._discount(D, count), minlength=n_hist)
            lm.counts.append(count)
            lm.totals.append(total)
            lm.gammas.append(np.divide(mass, total, out=np.zeros_like(mass), where=total > 0))
            lm.discounts.append(D)
        return lm

    @staticmethod
    def _discount(D: np.ndarray, count: np.ndarray) -> np.ndarray:
        """D(c): 0 for c = 0, D1, D2, then D3 for every c >= 3."""
        return np.where(count <= 0, 0.0, D[np.clip(count, 1, 3) - 1])

    def num_parameters(self) -> int:
        """Stored n-grams (the model's size)."""
        return int(sum(len(c) for c in self.counts))

    # -- lookup ------------------------------------------------------------------------

    def _gram_ids(self, grams: np.ndarray) -> np.ndarray:
        """Ids of the j-grams in rows of ``grams`` [M, j] (j >= 1), -1 for one never seen."""
        gid = grams[:, 0].astype(np.int64)
        for j in range(1, grams.shape[1]):
            gid = self._find(j + 1, gid, grams[:, j])
        return gid

    def _find(self, k: int, history: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Index of the k-gram (history id, w) in the keys of order k, or -1."""
        keys = self.keys[k - 1]
        assert keys is not None
        key = history * self.V + w
        pos = np.searchsorted(keys, key)
        pos = np.minimum(pos, len(keys) - 1)
        return np.where((history >= 0) & (keys[pos] == key), pos, -1)

    def _history_ids(self, contexts: np.ndarray, k: int) -> np.ndarray:
        """Id of the history of order k (the last k-1 tokens of each context row)."""
        M = contexts.shape[0]
        if k == 1:
            return np.zeros(M, dtype=np.int64)  # one empty history
        return self._gram_ids(contexts[:, contexts.shape[1] - (k - 1) :])

    def log_prob(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log p(targets[m] | contexts[m]) for contexts [M, n-1] (oldest first), targets [M]."""
        contexts = np.asarray(contexts, dtype=np.int64).reshape(len(targets), self.order - 1)
        w = np.asarray(targets, dtype=np.int64)
        p = np.full(len(w), 1.0 / self.V)
        for k in range(1, self.order + 1):
            h = self._history_ids(contexts, k)
            seen = h >= 0
            hs = np.where(seen, h, 0)
            total = np.where(seen, self.totals[k - 1][hs], 0.0)
            gid = w if k == 1 else self._find(k, h, w)
            c = np.where(gid >= 0, self.counts[k - 1][np.maximum(gid, 0)], 0)
            own = np.maximum(c - self._discount(self.discounts[k - 1], c), 0.0)
            mixed = (own + self.gammas[k - 1][hs] * total * p) / np.where(total > 0, total, 1.0)
            p = np.where(total > 0, mixed, p)
        return np.log(p)

    def distribution(self, contexts: np.ndarray) -> np.ndarray:
        """p(. | contexts[m]) over the whole vocabulary, [M, V] (one row at a time: for checks)."""
        contexts = np.asarray(contexts, dtype=np.int64)
        contexts = contexts.reshape(contexts.shape[0] if contexts.ndim > 1 else -1, self.order - 1)
        out = np.empty((contexts.shape[0], self.V))
        for m in range(contexts.shape[0]):
            p = np.full(self.V, 1.0 / self.V)
            for k in range(1, self.order + 1):
                h = int(self._history_ids(contexts[m : m + 1], k)[0])
                if h < 0 or self.totals[k - 1][h] <= 0:
                    continue
                if k == 1:
                    ws, c = np.arange(self.V), self.counts[0]
                else:
                    keys = self.keys[k - 1]
                    lo, hi = np.searchsorted(keys, [h * self.V, (h + 1) * self.V])
                    ws, c = keys[lo:hi] % self.V, self.counts[k - 1][lo:hi]
                total = self.totals[k - 1][h]
                p = self.gammas[k - 1][h] * p
                p[ws] += np.maximum(c - self._discount(self.discounts[k - 1], c), 0.0) / total
            out[m] = p
        return out

    # -- the model interface -------------------------------------------------------------

    def init_state(self, batch: int, device: Any = None) -> torch.Tensor:
        """n-1 ``[END]`` ids per stream, [n-1, B]."""
        return torch.full((self.order - 1, batch), self.end_id, dtype=torch.long)

    def _contexts(self, tokens: torch.Tensor, state: torch.Tensor | None) -> tuple[np.ndarray, torch.Tensor]:
        """Contexts [B, T, n-1] after each input token, and the new state."""
        B, T = tokens.shape
        n1 = self.order - 1
        if state is None:
            state = self.init_state(B)
        seq = torch.cat([state.t().cpu(), tokens.cpu()], dim=1).numpy()  # [B, n-1+T]
        if n1 == 0:
            return np.zeros((B, T, 0), dtype=np.int64), state
        ctx = np.lib.stride_tricks.sliding_window_view(seq, n1, axis=1)[:, 1:]  # [B, T, n-1]
        return ctx, torch.from_numpy(np.ascontiguousarray(seq[:, -n1:].T))

    def target_log_probs(self, tokens: torch.Tensor, targets: torch.Tensor,
                         state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(targets[b, t] | ..., tokens[b, t]) [B, T] (float64) and the new state."""
        ctx, state = self._contexts(tokens, state)
        B, T = tokens.shape
        logp = self.log_prob(ctx.reshape(B * T, self.order - 1), targets.cpu().numpy().reshape(-1))
        return torch.from_numpy(logp.reshape(B, T)).to(tokens.device), state

    def __call__(self, tokens: torch.Tensor, state: torch.Tensor | None = None):
        """log-probabilities [B, T, V] as logits, and the new state (slow: for sampling and checks)."""
        ctx, state = self._contexts(tokens, state)
        B, T = tokens.shape
        logp = np.log(self.distribution(ctx.reshape(B * T, self.order - 1))).reshape(B, T, self.V)
        return torch.from_numpy(logp).float().to(tokens.device), state

    forward = __call__

    def eval(self) -> "NgramLM":
        return self

    def train(self, mode: bool = True) -> "NgramLM":
        return self
