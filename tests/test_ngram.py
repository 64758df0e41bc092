"""The Kneser-Ney n-gram LM: normalisation, a case by hand, and a naive dictionary oracle."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
import pytest
import torch

from lmgen.evaluate import evaluate_tokens
from lmgen.ngram import NgramLM, modified_kn_discounts


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_probabilities_sum_to_one_for_random_and_unseen_contexts(order):
    rng = np.random.default_rng(order)
    V = 23
    tokens = rng.integers(0, 15, size=2000)  # ids 15..22 never occur: unseen tokens and contexts
    tokens[rng.random(2000) < 0.3] = 3  # skewed counts: every count-of-count class occurs
    lm = NgramLM.fit(tokens, order, V)
    contexts = np.concatenate([
        rng.integers(0, V, size=(40, order - 1)),  # mostly unseen histories
        np.lib.stride_tricks.sliding_window_view(tokens, order - 1)[rng.integers(0, 1900, 40)]
        if order > 1 else np.zeros((40, 0), dtype=np.int64),  # seen ones
    ])
    p = lm.distribution(contexts)
    assert p.shape == (80, V)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (p > 0).all()  # every token, unseen ones included, keeps some mass
    for w in range(V):  # the vectorised path agrees with the full distribution
        np.testing.assert_allclose(lm.log_prob(contexts, np.full(80, w)), np.log(p[:, w]), atol=1e-12)


def test_bigram_by_hand():
    """tokens 2 3 2 3 2 4, V = 5, D = 1/2 at every order.

    Unigram continuation counts: 2, 3 and 4 each follow one distinct token, so
    p1(w) = (1 - 1/2)/3 + (3 * 1/2 / 3) * 1/5 = 4/15 for w in {2, 3, 4}, 1/10 for 0 and 1.
    After 2 come 3 (twice) and 4 (once): c(2 .) = 3, gamma(2) = 2 * 1/2 / 3 = 1/3, so
    p(3|2) = 3/2/3 + 1/3 * 4/15 = 53/90, p(4|2) = 1/6 + 4/45 = 23/90, p(2|2) = 8/90, p(0|2) = 1/30.
    4 is never followed by anything: p(.|4) = p1.
    """
    lm = NgramLM.fit(np.array([2, 3, 2, 3, 2, 4]), order=2, vocab_size=5, discounts=[0.5, 0.5])
    expected = {2: [1 / 30, 1 / 30, 8 / 90, 53 / 90, 23 / 90], 4: [1 / 10, 1 / 10, 4 / 15, 4 / 15, 4 / 15]}
    for h, row in expected.items():
        np.testing.assert_allclose(lm.distribution(np.array([[h]]))[0], row, atol=1e-15)
        np.testing.assert_allclose(np.exp(lm.log_prob(np.full((5, 1), h), np.arange(5))), row, atol=1e-15)


def test_discounts_follow_chen_and_goodman():
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [7])
    Y = 10 / (10 + 2 * 5)
    np.testing.assert_allclose(modified_kn_discounts(counts), [1 - 2 * Y * 5 / 10, 2 - 3 * Y * 3 / 5,
                                                                3 - 4 * Y * 2 / 3])


class NaiveKN:
    """Interpolated modified Kneser-Ney from its definition, with dictionaries and Fractions."""

    def __init__(self, tokens, order, V):
        self.order, self.V = order, V
        tokens = list(tokens)
        self.count = {}  # k -> Counter of k-gram tuples (raw for k = n, continuation otherwise)
        for k in range(1, order + 1):
            grams = [tuple(tokens[i - k + 1 : i + 1]) for i in range(k - 1, len(tokens))]
            if k == order:
                self.count[k] = Counter(grams)
            else:
                left = defaultdict(set)
                for i in range(k, len(tokens)):
                    left[tuple(tokens[i - k + 1 : i + 1])].add(tokens[i - k])
                self.count[k] = Counter({g: len(s) for g, s in left.items()})
        self.D = {}
        for k in range(1, order + 1):
            n = [sum(1 for c in self.count[k].values() if c == j) for j in (1, 2, 3, 4)]
            Y = Fraction(n[0], n[0] + 2 * n[1]) if n[0] else Fraction(1, 2)
            self.D[k] = {}
            for c in (1, 2, 3):
                d = c - (c + 1) * Y * Fraction(n[c], n[c - 1]) if n[c - 1] else 0
                self.D[k][c] = d if 0 < d <= c else Y  # the documented fallback for sparse counts
            self.regular = all(n)

    def p(self, w, history):
        if len(history) == 0 and self.order >= 1:
            return self._p(w, (), 1)
        return self._p(w, tuple(history[len(history) - self.order + 1 :]), self.order)

    def _p(self, w, h, k):
        lower = Fraction(1, self.V) if k == 1 else self._p(w, h[1:], k - 1)
        counts = {g[-1]: c for g, c in self.count[k].items() if g[:-1] == h and c > 0}
        total = sum(counts.values())
        if total == 0:
            return lower
        D = lambda c: self.D[k][min(c, 3)]  # noqa: E731
        gamma = sum(D(c) for c in counts.values()) / total
        c = counts.get(w, 0)
        return (max(c - D(c), 0) if c else 0) / Fraction(total) + gamma * lower


def test_matches_a_naive_implementation():
    rng = np.random.default_rng(7)
    V, order = 6, 3
    tokens = rng.choice(V - 1, size=700, p=[0.4, 0.25, 0.15, 0.12, 0.08])  # id 5 never occurs
    lm = NgramLM.fit(tokens, order, V)
    naive = NaiveKN(tokens.tolist(), order, V)
    assert naive.regular  # the top order takes the Chen & Goodman estimates, not the fallback
    for k in range(1, order + 1):
        np.testing.assert_allclose(lm.discounts[k - 1], [float(naive.D[k][c]) for c in (1, 2, 3)], rtol=1e-12)
    contexts = np.array(list(itertools.product(range(V), repeat=order - 1)))
    got = lm.distribution(contexts)
    for row, h in zip(got, contexts):
        want = [float(naive.p(w, list(h))) for w in range(V)]
        np.testing.assert_allclose(row, want, rtol=1e-10)


def test_evaluator_and_model_interface_agree_with_log_prob():
    rng = np.random.default_rng(8)
    V, order = 9, 4
    lm = NgramLM.fit(rng.integers(0, V, size=3000), order, V)
    test = rng.integers(0, V, size=120)
    seq = np.concatenate([np.zeros(order - 1, dtype=np.int64), test])  # [END] padding = the initial state
    contexts = np.lib.stride_tricks.sliding_window_view(seq, order - 1)[:-1]
    expected = -lm.log_prob(contexts, test).sum()
    assert evaluate_tokens(lm, test, batch=1, bptt=7).nll == pytest.approx(expected, rel=1e-12)
    # The [B, T, V] interface, in two chunks with the state carried, gives the same log-probs.
    x = torch.from_numpy(seq[order - 2 : order - 2 + 120][None])  # [END] then test[:-1]
    a, state = lm(x[:, :50])
    b, _ = lm(x[:, 50:], state)
    logp = torch.cat([a, b], dim=1)[0].double().gather(-1, torch.from_numpy(test)[:, None])
    assert -float(logp.sum()) == pytest.approx(expected, rel=1e-6)


def test_kn5_beats_lower_orders_on_real_text(mirror):
    """On PTB a 5-gram KN lands near the published 141-148 test perplexity (Mikolov 2011/2012)."""
    from lmgen import corpora
    from lmgen.data import encode_split, prepare_tokenizer

    corpus = corpora.resolve("ptb")
    tok = prepare_tokenizer(corpus, "word")
    train = encode_split(corpus, tok, "train").tokens
    valid = encode_split(corpus, tok, "valid").tokens[:20000]
    ppl = {n: evaluate_tokens(NgramLM.fit(train, n, tok.vocab_size), valid, batch=1).perplexity for n in (1, 2, 5)}
    assert ppl[5] < ppl[2] < ppl[1]
    assert 120 < ppl[5] < 200, ppl
    assert math.isfinite(ppl[1])
