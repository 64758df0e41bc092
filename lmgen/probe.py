"""Finding units by hypothesis: which single unit separates "inside" from "outside" best?

A hypothesis is a boolean mask over the characters of a traced text (``regex_mask`` for
"inside a URL"). Every unit of every layer and kind is scored by its AUROC: the chance
that a random inside position has a larger value than a random outside one (ties count
half). A unit that is *low* inside works as well, so each unit gets a sign. The unit and
its sign are chosen on part A of the text and reported on part B, so the figure is not
the maximum of many noisy scores::

      text:  |<---------- A: choose unit + sign ---------->|<---- B: report ---->|

``logistic_probe`` fits a sparse (L1) logistic regression over all units on A and
reports its AUROC on B: how much a reader of *all* units gets, for comparison.

    >>> tr = trace(model, tok, text)                                   # doctest: +SKIP
    >>> best = rank_units(tr, regex_mask(text, URL_REGEX))[0]          # doctest: +SKIP
    >>> best.unit, best.sign, best.auroc_b                             # doctest: +SKIP
    (Unit(layer=0, kind='c', index=37), 1, 0.97)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .activations import Trace, Unit
from .errors import ConfigError

# "Inside a URL": scheme or www., then non-space characters that are not wiki/markup
# delimiters. Fixed here, before any run, so a benchmark cannot tune it on its result.
URL_REGEX = r"(?:https?|ftp)://[^\s\[\]<>\"'|{}]+|www\.[^\s\[\]<>\"'|{}]+"
# "Looks like a URL", with or without its scheme: a run of URL characters that holds ://,
# www. or a domain or web-file ending. For *generated* text: a model with its URL cell
# clamped on writes URL bodies ("books.google.com/books?id=..") but seldom "http://", which
# comes before the cell switches on. Defined after reading such samples, so it is reported
# beside URL_REGEX, never instead of it; on the held-out enwiki pages it contains every
# URL_REGEX character, and 92% of its characters are URL_REGEX's.
URL_LIKE_REGEX = (r"[^\s\[\]<>\"'|{}]*(?:://|www\.|\.(?:com|org|net|edu|gov|html?|php|aspx?|pdf|jpg|png)\b)"
                  r"[^\s\[\]<>\"'|{}]*")
# "Inside a wiki link": the brackets and everything between them, on one line.
WIKILINK_REGEX = r"\[\[[^\[\]\n]*\]\]"


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..T of every column of ``x`` [T, N] (ties get their average rank)."""
    x = np.asarray(x)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    # Work on rows of x.T: sorting contiguous rows is several times faster than sorting
    # the strided columns of a [T, N] array.
    xt = np.ascontiguousarray(x.T)  # [N, T]
    N, T = xt.shape
    order = np.argsort(xt, axis=1)
    s = np.take_along_axis(xt, order, axis=1)
    idx = np.broadcast_to(np.arange(T), s.shape)
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]  # first position of each run of equal values
    last = np.ones(s.shape, dtype=bool)
    last[:, :-1] = new[:, 1:]  # last position of each run
    first_pos = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
    last_pos = np.minimum.accumulate(np.where(last, idx, T - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(s.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first_pos + last_pos) / 2.0 + 1.0, axis=1)
    return ranks[0] if squeeze else ranks.T


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """Area under the ROC curve of every column of ``scores`` [T, N] (or [T]) for boolean
    ``labels`` [T]: P(score_inside > score_outside) + P(equal) / 2 (Mann-Whitney U)."""
    labels = np.asarray(labels, dtype=bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ConfigError(f"AUROC needs positions both inside and outside the predicate; "
                          f"got {pos} inside and {neg} outside")
    scores = np.asarray(scores)
    if scores.ndim == 1:
        return float(auroc(scores[:, None], labels)[0])
    out = np.empty(scores.shape[1])
    for j in range(0, scores.shape[1], 64):  # column blocks: memory T x 64, not T x N
        ranks = average_ranks(scores[:, j : j + 64])
        out[j : j + 64] = (ranks[labels].sum(axis=0) - pos * (pos + 1) / 2.0) / (pos * neg)
    return out


@dataclass
class UnitScore:
    """A unit with the sign chosen on part A and its AUROC on A and B (after the sign)."""

    unit: Unit
    sign: int
    auroc_a: float
    auroc_b: float

    def __str__(self) -> str:
        return f"{self.unit}{'+' if self.sign > 0 else '-'}  AUROC A {self.auroc_a:.3f}  B {self.auroc_b:.3f}"


def split_positions(trace: Trace, split_at: int | None = None, fraction: float = 0.5) -> np.ndarray:
    """Boolean [T]: True for tokens in part A. ``split_at``: the first character of part B;
    default: the first ``fraction`` of the tokens."""
    if split_at is not None:
        if not 0 < split_at < len(trace.text):
            raise ConfigError(f"split_at must be inside the text (1..{len(trace.text) - 1}), got {split_at}")
        return trace.spans[:, 0] < split_at
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    return np.arange(len(trace)) < int(round(len(trace) * fraction))


def _parts(trace: Trace, char_mask, where, split_at, fraction):
    labels = trace.token_mask(char_mask)
    keep = trace.token_mask(where) if where is not None else np.ones(len(trace), dtype=bool)
    in_a = split_positions(trace, split_at, fraction)
    a, b = keep & in_a, keep & ~in_a
    for name, part in (("A", a), ("B", b)):
        inside = int(labels[part].sum())
        if inside == 0 or inside == part.sum():
            raise ConfigError(
                f"part {name} of the text has {inside} of {int(part.sum())} positions inside the predicate; "
                f"both parts need positions inside and outside (use a longer text or move split_at)"
            )
    return labels, a, b


def rank_units(
    trace: Trace,
    char_mask: np.ndarray,
    *,
    kinds=None,
    where: np.ndarray | None = None,
    split_at: int | None = None,
    fraction: float = 0.5,
) -> list[UnitScore]:
    """Every unit, best first: sign and order chosen by AUROC on part A, AUROC_B reported.

    ``char_mask`` [len(text)]: the predicate per character (see ``regex_mask``).
    ``where`` [len(text)]: only score these positions (e.g. inside long non-space runs:
    the "hard" AUROC). ``kinds``: only these activation kinds (default all).
    """
    labels, a, b = _parts(trace, char_mask, where, split_at, fraction)
    kinds = tuple(kinds) if kinds is not None else trace.kinds
    units, auc_a, auc_b = [], [], []
    for layer, acts in enumerate(trace.layers):  # block by block: no [T, N] copy of everything
        for kind in kinds:
            values = trace.layers[layer][kind] if kind in acts else trace.matrix([kind])[0]
            units += [Unit(layer, kind, j) for j in range(values.shape[1])]
            auc_a.append(auroc(values[a], labels[a]))
            auc_b.append(auroc(values[b], labels[b]))
    auc_a, auc_b = np.concatenate(auc_a), np.concatenate(auc_b)
    signs = np.where(auc_a >= 0.5, 1, -1)
    auc_a = np.where(signs > 0, auc_a, 1 - auc_a)
    auc_b = np.where(signs > 0, auc_b, 1 - auc_b)
    order = np.argsort(-auc_a, kind="stable")
    return [UnitScore(units[j], int(signs[j]), float(auc_a[j]), float(auc_b[j])) for j in order]


def score_feature(
    trace: Trace, values: np.ndarray, char_mask: np.ndarray, *, where=None, split_at=None, fraction=0.5
) -> UnitScore:
    """The same protocol for one extra per-token feature (e.g. a run-length counter)."""
    labels, a, b = _parts(trace, char_mask, where, split_at, fraction)
    values = np.asarray(values, dtype=np.float64)
    auc_a, auc_b = float(auroc(values[a], labels[a])), float(auroc(values[b], labels[b]))
    sign = 1 if auc_a >= 0.5 else -1
    if sign < 0:
        auc_a, auc_b = 1 - auc_a, 1 - auc_b
    return UnitScore(Unit(-1, "feature", 0), sign, auc_a, auc_b)


def run_length(text: str) -> np.ndarray:
    """Per character [len(text)]: how many non-whitespace characters end here (0 on a
    space): the trivial "characters since the last whitespace" counter.

    >>> run_length("ab  cde").tolist()
    [1, 2, 0, 0, 1, 2, 3]
    """
    counts = np.zeros(len(text), dtype=np.int64)
    n = 0
    for i, ch in enumerate(text):
        n = 0 if ch.isspace() else n + 1
        counts[i] = n
    return counts


def long_runs(text: str, min_length: int = 8) -> np.ndarray:
    """Boolean [len(text)]: characters inside whitespace-free runs of >= ``min_length``."""
    import re

    mask = np.zeros(len(text), dtype=bool)
    for m in re.finditer(r"\S{%d,}" % min_length, text):
        mask[m.start() : m.end()] = True
    return mask


@dataclass
class Probe:
    """A sparse logistic-regression reader of all units; ``weights`` over the standardised
    units (zero for units it does not use)."""

    units: list[Unit]
    weights: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    auroc_a: float
    auroc_b: float

    @property
    def nonzero(self) -> int:
        return int(np.count_nonzero(self.weights))

    def top_units(self, n: int = 10) -> list[tuple[Unit, float]]:
        order = np.argsort(-np.abs(self.weights))[:n]
        return [(self.units[j], float(self.weights[j])) for j in order if self.weights[j] != 0]

    def __str__(self) -> str:
        return (f"L1 logistic probe: {self.nonzero} of {len(self.units)} units, "
                f"AUROC A {self.auroc_a:.3f}  B {self.auroc_b:.3f}")


def logistic_probe(
    trace: Trace,
    char_mask: np.ndarray,
    *,
    l1: float = 1e-3,
    steps: int = 300,
    kinds=None,
    where=None,
    split_at=None,
    fraction: float = 0.5,
) -> Probe:
    """Fit ``sigmoid(w . standardise(units) + b)`` on part A by proximal gradient descent
    (ISTA with Nesterov momentum) on mean log-loss + ``l1 * |w|_1``; report AUROC on A and B."""
    import torch

    labels, a, b = _parts(trace, char_mask, where, split_at, fraction)
    matrix, units = trace.matrix(kinds)
    mean, std = matrix[a].mean(axis=0), matrix[a].std(axis=0) + 1e-6
    X = torch.from_numpy(((matrix - mean) / std).astype(np.float32))  # [T, N]
    y = torch.from_numpy(labels.astype(np.float32))
    Xa, ya = X[torch.from_numpy(a)], y[torch.from_numpy(a)]
    n = Xa.shape[1]
    w, bias = torch.zeros(n), torch.zeros(())
    # Step 1/L: the log-loss gradient is Lipschitz with L <= ||X||_2^2 / (4 m) <= ||X||_F^2 / (4 m).
    lr = float(4 * len(Xa) / (Xa.square().sum() + 1e-12))
    lr = min(lr * 4, 10.0)  # the Frobenius bound is loose; x4 is still stable for standardised data
    w_prev, b_prev = w.clone(), bias.clone()
    for k in range(1, steps + 1):
        mom = (k - 1) / (k + 2)
        vw, vb = w + mom * (w - w_prev), bias + mom * (bias - b_prev)
        p = torch.sigmoid(Xa @ vw + vb)
        gw, gb = Xa.T @ (p - ya) / len(ya), (p - ya).mean()
        w_prev, b_prev = w, bias
        z = vw - lr * gw
        w = torch.sign(z) * torch.clamp(z.abs() - lr * l1, min=0.0)  # soft threshold: L1 prox
        bias = vb - lr * gb
    scores = (X @ w + bias).numpy()
    return Probe(units, w.numpy(), float(bias), mean, std,
                 float(auroc(scores[a], labels[a])), float(auroc(scores[b], labels[b])))


# -- causal effect: does the model need the unit where the predicate holds? -------------------


@dataclass
class CausalEffect:
    """What setting one unit to 0 or to its mean does to the loss, inside and outside a
    predicate, against the same ablation of ``len(null_units)`` random units of its layer
    and kind (:func:`causal_effect`). Losses in nats per token; a rise is ablated - intact,
    averaged over the tokens inside (outside) the predicate."""

    unit: str
    tokens: int  # tokens scored (the whole text)
    inside: int  # of them inside the predicate
    loss_inside: float  # intact model
    loss_outside: float
    zero_inside: float  # rise with the unit set to 0
    zero_outside: float
    mean_inside: float  # rise with the unit set to its mean over the text
    mean_outside: float
    mean_value: float
    null_units: list[str]
    null_zero_inside: np.ndarray  # [N] the same rises for each random unit
    null_zero_outside: np.ndarray
    null_mean_inside: np.ndarray
    null_mean_outside: np.ndarray

    @staticmethod
    def _percentile(value: float, null: np.ndarray) -> float:
        """The share of the null below ``value`` (ties count half), in percent."""
        if len(null) == 0:
            return float("nan")
        return float(100.0 * (np.sum(null < value) + 0.5 * np.sum(null == value)) / len(null))

    @property
    def percentile_zero(self) -> float:
        """Where the unit's rise inside, set to 0, lies among the random units' (0-100)."""
        return self._percentile(self.zero_inside, self.null_zero_inside)

    @property
    def percentile_mean(self) -> float:
        return self._percentile(self.mean_inside, self.null_mean_inside)

    @property
    def ratio_zero(self) -> float:
        """Rise inside / rise outside, set to 0 (inf when nothing rises outside)."""
        return _ratio(self.zero_inside, self.zero_outside)

    @property
    def ratio_mean(self) -> float:
        return _ratio(self.mean_inside, self.mean_outside)

    def __str__(self) -> str:
        n = len(self.null_units)
        kind = self.unit.split("[")[0]
        lines = [f"causal effect of {self.unit}: {self.inside:,} of {self.tokens:,} tokens inside the predicate",
                 f"{'':28s}{'inside':>10s}{'outside':>10s}{'ratio':>9s}{'percentile':>12s}",
                 f"{'loss, intact':28s}{self.loss_inside:10.4f}{self.loss_outside:10.4f}"]
        for label, ins, out, ratio, pct in (
                ("rise, set to 0", self.zero_inside, self.zero_outside, self.ratio_zero, self.percentile_zero),
                (f"rise, set to mean {self.mean_value:+.3g}", self.mean_inside, self.mean_outside, self.ratio_mean,
                 self.percentile_mean)):
            shown = f"{ratio:8.1f}x" if np.isfinite(ratio) else f"{'-':>9s}"  # no rise outside to compare with
            lines.append(f"{label:28s}{ins:+10.4f}{out:+10.4f}{shown}{pct:11.1f}%")
        if n:
            for label, ins, out in (("set to 0", self.null_zero_inside, self.null_zero_outside),
                                    ("set to mean", self.null_mean_inside, self.null_mean_outside)):
                lines.append(f"{n} random {kind} units, {label}: rise inside median {np.median(ins):+.4f} "
                             f"(95th percentile {np.percentile(ins, 95):+.4f}), outside median {np.median(out):+.4f}")
        return "\n".join(lines)


def _ratio(inside: float, outside: float) -> float:
    return inside / outside if outside > 0 else (float("inf") if inside > 0 else float("nan"))


def causal_effect(model, tokenizer, text: str, unit, predicate: np.ndarray, *, n_random: int = 100, seed: int = 0,
                  means=None, rows: int = 64, window: int = 512) -> CausalEffect:
    """The rise in loss inside and outside ``predicate`` when ``unit`` is set to 0 and to its
    mean, and where it lies among ``n_random`` random units of its layer and kind.

    ``predicate`` [len(text)] is a character mask (e.g. ``regex_mask(text, URL_REGEX)``); a
    token is inside when most of its characters are (as :meth:`Trace.token_mask`), and its
    loss is the loss of predicting it. ``[END] + text`` is read once per setting, the
    settings side by side in a batch (:func:`lmgen.intervene.ablation_losses`). ``means``:
    a :class:`Trace` whose per-unit means are the "mean" values (default: a trace of
    ``text`` itself). ``seed`` picks the random units.

    >>> effect = causal_effect(model, tok, text, "L0.c[43]", regex_mask(text, URL_REGEX))   # doctest: +SKIP
    >>> effect.zero_inside, effect.percentile_zero                                          # doctest: +SKIP
    (0.52, 100.0)
    """
    from .activations import token_spans, trace
    from .intervene import ablation_losses, check_unit

    layer, kind, index = check_unit(model, unit)
    if n_random < 0:
        raise ConfigError(f"n_random must be >= 0, got {n_random}")
    ids = tokenizer.encode_array(text)
    mask = np.asarray(predicate, dtype=bool)
    if mask.shape != (len(text),) or len(ids) == 0:
        raise ConfigError(f"the predicate has shape {mask.shape}, the text has {len(text)} characters")
    spans = token_spans(tokenizer, text, ids)
    counts = np.concatenate([[0], np.cumsum(mask)])  # majority of each token's characters, as Trace.token_mask
    labels = (counts[spans[:, 1]] - counts[spans[:, 0]]) * 2 > np.maximum(spans[:, 1] - spans[:, 0], 1)
    if labels.all() or not labels.any():
        raise ConfigError(f"{int(labels.sum())} of {len(labels)} tokens are inside the predicate; "
                          "a causal effect needs tokens both inside and outside")
    if means is None:
        means = trace(model, tokenizer, text, kinds=(kind,), top_k=1, allow_unknown=True)
    mu = np.asarray(means.layers[layer][kind], dtype=np.float64).mean(axis=0)  # [H]
    others = np.array([j for j in range(len(mu)) if j != index])
    null = np.sort(np.random.default_rng(seed).choice(others, size=min(n_random, len(others)), replace=False))
    settings = [(index, 0.0), (index, float(mu[index]))]
    settings += [(int(j), 0.0) for j in null] + [(int(j), float(mu[j])) for j in null]
    intact, rises = ablation_losses(model, ids, tokenizer.end_id, layer, kind, settings, rows=rows, window=window)
    ins, outs = rises[:, labels].mean(axis=1), rises[:, ~labels].mean(axis=1)  # [S] each
    n = len(null)
    return CausalEffect(
        unit=f"L{layer}.{kind}[{index}]", tokens=len(ids), inside=int(labels.sum()),
        loss_inside=float(intact[labels].mean()), loss_outside=float(intact[~labels].mean()),
        zero_inside=float(ins[0]), zero_outside=float(outs[0]), mean_inside=float(ins[1]), mean_outside=float(outs[1]),
        mean_value=float(mu[index]), null_units=[f"L{layer}.{kind}[{j}]" for j in null],
        null_zero_inside=ins[2 : 2 + n], null_zero_outside=outs[2 : 2 + n],
        null_mean_inside=ins[2 + n :], null_mean_outside=outs[2 + n :],
    )  # fmt: skip


# -- pattern search: where else are the same units on? (LSTMVis's "match") -------------------


@dataclass
class Match:
    """A place where the pattern's units are on: characters [start, end), tokens [t0, t1).
    ``score = on * off * cover`` in [0, 1]: ``on`` the mean share of the units on inside,
    ``off`` one minus their mean share at the tokens just before and after, ``cover`` its
    length over the selection's (in tokens), at most 1: a shorter run is partial evidence,
    a longer one (a longer URL, a longer string) is as good a match. Equal scores: the
    longer run first."""

    start: int
    end: int
    t0: int
    t1: int
    score: float
    on: float
    off: float
    cover: float = 1.0


@dataclass
class Pattern:
    """What :func:`find_pattern` found: the selected characters, the units on there, the
    share of them on at every token ([T]), and the other places, best first."""

    trace: Trace
    start: int
    end: int
    threshold: float
    units: list[Unit]
    share: np.ndarray
    matches: list[Match]
    signs: list[int] = field(default_factory=list)  # +1: on when high, -1: on when low (signed=True)
    lag: int = 0  # tokens the units were allowed to take to switch on and off
    off_after: bool = True  # were they required to be off after the selection?

    def show(self, top: int = 10, context: int = 30):
        """The selection and the ``top`` matches as coloured text (:func:`lmgen.viz.show_pattern`)."""
        from .viz import show_pattern

        return show_pattern(self, top=top, context=context)

    def _repr_html_(self) -> str:
        return self.show()._repr_html_()


def find_pattern(trace: Trace, start: int, end: int, threshold: float = 0.3, *, kinds=("h",), min_share: float = 0.5,
                 search: tuple[int, int] | None = None, signed: bool = False, lag: int = 0,
                 off_after: bool = True) -> Pattern:
    """The units on in characters [start, end) and off just before and after, and the other
    places of the text where the same set is on, ranked by :class:`Match`'s score.

    A unit is on at a token when its value exceeds ``threshold``; it belongs to the pattern
    when it is on at every token of the selection and off at the token before and the
    token after it (where those exist). A candidate is a maximal run of tokens where at
    least ``min_share`` of the pattern's units are on, outside the selection; ``search``
    keeps only candidates inside that character range (e.g. part B). ``signed``: a unit
    may also be on by being below ``-threshold`` (LSTMVis looks at high values only; an
    LSTM codes as often by low ones); ``Pattern.signs`` says which.

    ``lag``: the tokens a unit may take to switch on and off. A cell state integrates what
    it reads, so a URL cell is on only from the third character of "http://" and fades a
    token or two after the URL: with ``lag=k`` a unit must be on from the selection's
    (k+1)-th token to its last and off at the token before it and at the k-th token after
    it. ``off_after=False`` drops the test after the selection, for a state that fades
    over many tokens (LSTMVis's match makes either end optional: its server's
    ``constrain_left`` / ``constrain_right``). ``lag=0`` with
    ``off_after=True`` is LSTMVis's rule. The selection's length, for ``cover``, is that of
    its own run of tokens with the pattern on.

    >>> pattern = find_pattern(tr, 120, 140, 0.5)        # doctest: +SKIP
    >>> [tr.text[m.start:m.end] for m in pattern.matches[:3]]   # doctest: +SKIP
    """
    text = trace.text
    if not 0 <= start < end <= len(text):
        raise ConfigError(f"the selection must satisfy 0 <= start < end <= {len(text)}, got [{start}, {end})")
    if not 0 < min_share <= 1:
        raise ConfigError(f"min_share must be in (0, 1], got {min_share}")
    tokens = np.flatnonzero((trace.spans[:, 1] > start) & (trace.spans[:, 0] < end))
    if not len(tokens):
        raise ConfigError(f"no token lies in the selection [{start}, {end})")
    t0, t1 = int(tokens[0]), int(tokens[-1]) + 1
    if not 0 <= lag < t1 - t0:
        raise ConfigError(f"lag must be in [0, {t1 - t0}) for a selection of {t1 - t0} tokens, got {lag}")
    units, signs, columns = [], [], []
    for layer, acts in enumerate(trace.layers):
        for kind in kinds:
            if kind not in acts:
                raise ConfigError(f"no activation kind {kind!r} in a {trace.cell} trace; choose from {trace.kinds}")
            for sign in (1, -1) if signed else (1,):
                values = acts[kind] if sign > 0 else -acts[kind]  # a low unit is "on" below -threshold
                chosen = (values[t0 + lag : t1] > threshold).all(axis=0)
                for t in (t0 - 1, t1 + lag) if off_after else (t0 - 1,):
                    if 0 <= t < len(trace):
                        chosen &= values[t] <= threshold
                units += [Unit(layer, kind, int(j)) for j in np.flatnonzero(chosen)]
                signs += [sign] * int(chosen.sum())
                columns.append(values[:, chosen] > threshold)
    if not units:
        where = f"[{start}, {end})" if not lag else f"[{start}, {end}) but its first {lag} tokens"
        around = "just before and after" if off_after else "just before"
        raise ConfigError(f"no unit of kinds {', '.join(kinds)} is above {threshold} on all of {where} "
                          f"and below it {around}; lower the threshold, select fewer characters, allow a lag "
                          f"or drop the test after (off_after=False)")
    count = np.concatenate(columns, axis=1).sum(axis=1)  # [T] units on; integers keep the means exact
    share = count / len(units)
    on = np.concatenate([[0], (share >= min_share).astype(np.int8), [0]])
    run_starts, run_ends = np.flatnonzero(np.diff(on) == 1), np.flatnonzero(np.diff(on) == -1)
    cum = np.concatenate([[0], np.cumsum(count)])
    padded = np.concatenate([[0.0], share, [0.0]])  # share "before the first" and "after the last" token: 0
    lo, hi = search if search is not None else (0, len(text))
    own = int(np.searchsorted(run_ends, t1 - 1, side="right"))  # the run holding the selection's last token
    size = int(run_ends[own] - run_starts[own])  # t1 - t0 under LSTMVis's rule
    matches = []
    for a, b in zip(run_starts.tolist(), run_ends.tolist()):
        if a < t1 + lag and b > t0:  # the selection itself
            continue
        s, e = int(trace.spans[a, 0]), int(trace.spans[b - 1, 1])
        if s < lo or e > hi:
            continue
        inside, off = (cum[b] - cum[a]) / ((b - a) * len(units)), 1.0 - (padded[a] + padded[b + 1]) / 2.0
        cover = min(b - a, size) / size
        matches.append(Match(s, e, a, b, float(inside * off * cover), float(inside), float(off), float(cover)))
    matches.sort(key=lambda m: (-m.score, -(m.t1 - m.t0), m.start))
    return Pattern(trace, start, end, float(threshold), units, share, matches, signs, lag, off_after)
