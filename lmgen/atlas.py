"""The neuron atlas: for every predicate of a library, the unit that tracks it best, its
held-out AUROC, and the controls it must beat, on one standalone HTML page.

The protocol is :mod:`lmgen.probe`'s (and ``benchmarks/url_neuron.py``'s), fixed before
any run, for every predicate of :mod:`lmgen.predicates`::

      text:  |<------ A: choose unit + sign ------>|<------ B: report ------>|

    best        the (unit, sign) with the highest AUROC on A; reported: its AUROC on B
    hard        the same on the predicate's hard positions only (look-alikes), if it has them
    untrained   the same (all positions) on the untrained model (same architecture, same
                seed): what random weights and the input alone give
    control     every trivial feature (column, run length, bracket counters, quote
                parity, P(inside | current token)), sign chosen on A; the best on B
    gain        AUROC_B - max(control, untrained): rows are sorted by it
    probe       (``probe=True``) a sparse logistic probe over all h and c units, fitted on A,
                AUROC on B: is the predicate in the model at all, when no single unit has it?

The best control is taken on B (not chosen on A, as the unit is), so the gain is a lower
bound. Speed: a unit's ranks do not depend on the predicate, so they are computed once
per part and shared by all predicates; the AUROCs of P predicates are then one matrix
product, labels [P, T] @ ranks [T, N], and equal :func:`lmgen.probe.rank_units`' exactly
(the sums are of half-integers, exact in float64 in any order).

    >>> atlas = build(model, tokenizer, text)                  # doctest: +SKIP
    >>> print(atlas.table())                                   # doctest: +SKIP
    >>> atlas.save("atlas.html")                               # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .activations import CHUNK, Trace, Unit, trace
from .errors import ConfigError
from .model import RNNLM
from .predicates import CONTROL_DOCS, Predicate, controls, select
from .probe import Probe, UnitScore, logistic_probe, split_positions
from .tokenizer import Tokenizer

# Units ranked at once: memory ~ 3 x BLOCK x T x 8 bytes (ranks, order, sorted values).
BLOCK = 64
# A predicate needs this many positions inside and outside in each part, else it is skipped.
MIN_COUNT = 10


@dataclass
class ControlScore:
    """A trivial feature scored by the same protocol: sign on A, AUROC on A and B."""

    name: str
    sign: int
    auroc_a: float
    auroc_b: float


@dataclass
class Row:
    """One predicate's line of the atlas; ``skipped`` says why it has no scores."""

    predicate: Predicate
    inside: float = float("nan")  # fraction of the scored part-B tokens inside
    best: UnitScore | None = None
    hard: UnitScore | None = None
    untrained: UnitScore | None = None
    control: ControlScore | None = None
    control_hard: ControlScore | None = None
    probe: Probe | None = None  # build(probe=True): a population reader, fitted on A
    skipped: str = ""

    @property
    def baseline(self) -> float:
        """The best control's AUROC_B: trivial features and the untrained model."""
        values = [s.auroc_b for s in (self.control, self.untrained) if s is not None]
        return max(values) if values else float("nan")

    @property
    def gain(self) -> float:
        return self.best.auroc_b - self.baseline if self.best is not None else float("nan")


@dataclass
class Atlas:
    """The result of :func:`build`: ``rows`` best gain first; ``to_html``, ``save``, ``table``."""

    rows: list[Row]
    trace: Trace = field(repr=False)
    in_a: np.ndarray = field(repr=False)  # [T] tokens of part A
    masks: dict[str, np.ndarray] = field(repr=False)  # predicate name -> per-character mask
    model: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table of the rows (what the CLI prints)."""
        probed = any(r.probe is not None for r in self.rows)
        head = (f"{'predicate':20s}{'inside':>7s}  {'unit':15s}{'A':>7s}{'B':>7s}{'hard B':>8s}"
                f"{'untr. B':>8s}  {'best control':14s}{'B':>6s}{'gain':>8s}" + (f"{'probe B':>9s}" if probed else ""))
        lines = [head]
        for r in self.rows:
            if r.best is None:
                lines.append(f"{r.predicate.name:20s}  skipped: {r.skipped}")
                continue
            hard = f"{r.hard.auroc_b:8.3f}" if r.hard else f"{'-':>8s}"
            untr = f"{r.untrained.auroc_b:8.3f}" if r.untrained else f"{'-':>8s}"
            lines.append(f"{r.predicate.name:20s}{r.inside:7.1%}  {_unit_name(r.best):15s}{r.best.auroc_a:7.3f}"
                         f"{r.best.auroc_b:7.3f}{hard}{untr}  {r.control.name:14s}{r.control.auroc_b:6.3f}"
                         f"{r.gain:+8.3f}" + (f"{r.probe.auroc_b:9.3f}" if r.probe is not None else ""))
        return "\n".join(lines)

    def to_html(self) -> str:
        """The whole standalone page (table, histograms, snippets)."""
        from .atlas_page import render

        return render(self)

    def table_html(self) -> str:
        """The table alone, as HTML: what a notebook shows (the whole page can be ~1 MB)."""
        from .atlas_page import table_fragment

        return table_fragment(self)

    def _repr_html_(self) -> str:
        return self.table_html()

    def __repr__(self) -> str:
        done = sum(r.best is not None for r in self.rows)
        return f"<lmgen Atlas: {done} of {len(self.rows)} predicates scored on {len(self.trace):,} tokens; .save(path)>"

    def save(self, path: str | Path) -> Path:
        """Write the standalone HTML page (UTF-8); returns the path."""
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def _unit_name(score: UnitScore) -> str:
    return f"{score.unit}{'+' if score.sign > 0 else '-'}"


# -- AUROCs of many units for many predicates ---------------------------------------------


def average_ranks_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks (1..m, ties share their mean) of every row of ``x`` [n, m] -> float64 [n, m].

    :func:`lmgen.probe.average_ranks` by another route, ~4x faster: rows without ties (most
    units) are an inverse permutation; only rows with ties take the run-by-run path.
    """
    n, m = x.shape
    order = np.argsort(x, axis=1)
    s = np.take_along_axis(x, order, axis=1)
    ranks = np.empty((n, m), dtype=np.float64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1, m + 1, dtype=np.float64), (n, m)), axis=1)
    for j in np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)):
        new = np.ones(m, dtype=bool)
        np.not_equal(s[j, 1:], s[j, :-1], out=new[1:])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], m)
        ranks[j, order[j]] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def aurocs(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC [P, n] of every column of ``values`` [m, n] for every row of ``labels`` [P, m]."""
    labels = labels.astype(np.float64)
    pos = labels.sum(axis=1)
    neg = labels.shape[1] - pos
    x = np.ascontiguousarray(values.T, dtype=np.float32 if values.dtype == np.float16 else values.dtype)
    sums = labels @ average_ranks_rows(x).T  # [P, n]: exact (half-integers)
    return (sums - (pos * (pos + 1) / 2.0)[:, None]) / (pos * neg)[:, None]


class _SortedBlock:
    """One block of units over one part of the text, sorted once: ``order`` [n, m] sorts
    each row, and runs of equal values (ties) are found once for every subset."""

    def __init__(self, x: np.ndarray):  # x [n, m]: a unit per row
        n, m = x.shape
        self.order = np.argsort(x, axis=1)
        s = np.take_along_axis(x, self.order, axis=1)
        self.dest = (self.order + (np.arange(n) * m)[:, None]).ravel()  # sorted slot -> flat position
        cont = np.zeros((n, m), dtype=bool)  # equal to the value before it in the sorted row
        np.equal(s[:, 1:], s[:, :-1], out=cont[:, 1:])
        cont = cont.ravel()
        involved = cont.copy()
        involved[:-1] |= cont[1:]
        self.tied = np.flatnonzero(involved)  # slots inside a run of equal values
        starts = np.flatnonzero(~cont[self.tied])
        self.lengths = np.diff(np.append(starts, len(self.tied)))
        self.first = self.tied[starts]  # each run's first slot
        self.last = self.first + self.lengths - 1

    def ranks(self, sel: np.ndarray) -> np.ndarray:
        """[n, m]: every position's rank among the positions ``sel`` [m] of its row (ties
        share their mean). Positions outside ``sel`` get a finite number of no meaning.

        Keeping the selected slots of a sorted row leaves them sorted, so a rank is a
        running count of selected slots: a cumulative sum, no sort per subset.
        """
        n, m = self.order.shape
        picked = sel[self.order]  # [n, m]: is the slot's position selected?
        count = np.cumsum(picked, axis=1).ravel()
        values = count.astype(np.float64)
        if len(self.tied):
            before = count[self.first] - picked.ravel()[self.first]  # selected slots before the run
            inside = count[self.last] - before
            values[self.tied] = np.repeat(before + (inside + 1) / 2.0, self.lengths)  # exact half-integers
        out = np.empty(n * m)
        out[self.dest] = values
        return out.reshape(n, m)


def unit_aurocs(tr: Trace, groups: Sequence[tuple[np.ndarray, np.ndarray]], in_a: np.ndarray,
                kinds: Sequence[str]) -> tuple[list[Unit], list[tuple[np.ndarray, np.ndarray]]]:
    """Every unit (in rank_units' order: layer, kind, index) for every group of predicates.

    A group is (keep [T], labels [P, T]): predicates scored on the positions ``keep``.
    Returns the units and per group (AUROC on A, AUROC on B), each [P, N]. Each block of
    units is sorted once per part; every group reuses that sort (:class:`_SortedBlock`).
    """
    parts = [np.flatnonzero(in_a), np.flatnonzero(~in_a)]
    prepared = []  # per part, per group: (selected [m], weights [P, m], offset [P], pairs [P])
    for idx in parts:
        per_group = []
        for keep, labels in groups:
            sel = keep[idx]
            weights = (labels[:, idx] & sel).astype(np.float64)
            pos = weights.sum(axis=1)
            per_group.append((sel, weights, pos * (pos + 1) / 2.0, pos * (sel.sum() - pos)))
        prepared.append(per_group)
    units = []
    results = [[[] for _ in groups] for _ in parts]
    for layer, acts in enumerate(tr.layers):
        for kind in kinds:
            values = acts[kind]
            units += [Unit(layer, kind, j) for j in range(values.shape[1])]
            for j in range(0, values.shape[1], BLOCK):
                for p, idx in enumerate(parts):
                    block = _SortedBlock(np.ascontiguousarray(values[idx, j : j + BLOCK].T, dtype=np.float32))
                    for g, (sel, weights, offset, pairs) in enumerate(prepared[p]):
                        sums = weights @ block.ranks(sel).T  # [P, n]: exact sums of half-integers
                        results[p][g].append((sums - offset[:, None]) / pairs[:, None])
    out = [(np.concatenate(a, axis=1), np.concatenate(b, axis=1)) for a, b in zip(*results)]
    return units, out


def _signed(auc_a: np.ndarray, auc_b: np.ndarray):
    signs = np.where(auc_a >= 0.5, 1, -1)
    return signs, np.where(signs > 0, auc_a, 1 - auc_a), np.where(signs > 0, auc_b, 1 - auc_b)


def choose(units: list[Unit], auc_a: np.ndarray, auc_b: np.ndarray) -> UnitScore:
    """The best unit by signed AUROC on A (the first of equals, as rank_units orders them)."""
    signs, sa, sb = _signed(auc_a, auc_b)
    j = int(np.argmax(sa))
    return UnitScore(units[j], int(signs[j]), float(sa[j]), float(sb[j]))


# -- the protocol -----------------------------------------------------------------------------


@dataclass
class _Group:
    """Predicates scored on the same positions (all, or one hard variant)."""

    keep: np.ndarray  # [T]
    rows: list[int] = field(default_factory=list)  # indices into the atlas rows
    labels: list[np.ndarray] = field(default_factory=list)  # [T] each


def _too_few(labels: np.ndarray, keep: np.ndarray, in_a: np.ndarray) -> str:
    """Why the predicate cannot be scored on positions ``keep`` ("" when both parts have
    MIN_COUNT positions inside and outside)."""
    for name, part in (("A", keep & in_a), ("B", keep & ~in_a)):
        inside, total = int(labels[part].sum()), int(part.sum())
        if min(inside, total - inside) < MIN_COUNT:
            return f"part {name} has {inside} of {total} positions inside (needs >= {MIN_COUNT} inside and outside)"
    return ""


def _score_groups(tr: Trace, groups: list[_Group], in_a, kinds) -> dict[tuple[int, int], UnitScore]:
    """{(group, row): best unit} for every group of predicates."""
    live = [(g, group) for g, group in enumerate(groups) if group.rows]
    units, scores = unit_aurocs(tr, [(group.keep, np.stack(group.labels)) for _, group in live], in_a, kinds)
    out = {}
    for (g, group), (auc_a, auc_b) in zip(live, scores):
        for p, row in enumerate(group.rows):
            out[(g, row)] = choose(units, auc_a[p], auc_b[p])
    return out


def _token_values(tr: Trace, per_char: np.ndarray) -> np.ndarray:
    """A per-character feature -> per token: its value at the token's last character."""
    return np.asarray(per_char, dtype=np.float64)[np.maximum(tr.spans[:, 1] - 1, 0)]


def _best_control(tr: Trace, feats: dict[str, np.ndarray], labels: np.ndarray, keep, in_a,
                  exclude: Sequence[str]) -> ControlScore:
    """Every allowed control, sign on A; the one with the best AUROC on B."""
    a, b = keep & in_a, keep & ~in_a
    # P(inside | current token) from part A: the memoryless reader of the input
    counts = np.bincount(tr.ids[a], minlength=len(tr.vocab)).astype(np.float64)
    hits = np.bincount(tr.ids[a], weights=labels[a].astype(np.float64), minlength=len(tr.vocab))
    rate = np.where(counts > 0, hits / np.maximum(counts, 1), labels[a].mean())
    names = [n for n in feats if n not in exclude] + ["token"]
    matrix = np.stack([feats[n] for n in names[:-1]] + [rate[tr.ids]], axis=1)  # [T, F]
    signs, sa, sb = _signed(aurocs(matrix[a], labels[None, a])[0], aurocs(matrix[b], labels[None, b])[0])
    j = int(np.argmax(sb))
    return ControlScore(names[j], int(signs[j]), float(sa[j]), float(sb[j]))


def _groups(tr: Trace, text: str, rows: list[Row], masks: dict[str, np.ndarray],
            in_a: np.ndarray) -> tuple[list[_Group], dict[int, int]]:
    """The predicates that can be scored, grouped by the positions they are scored on: group
    0 all positions, then one group per distinct hard variant. Returns the groups and
    {row: its hard group}; rows that cannot be scored get ``skipped``."""
    everything = np.ones(len(tr), dtype=bool)
    plain, hard = _Group(everything), {}  # hard groups by the bytes of their positions
    hard_of = {}
    for i, row in enumerate(rows):
        labels = tr.token_mask(masks[row.predicate.name])
        row.skipped = _too_few(labels, everything, in_a)
        if row.skipped:
            continue
        row.inside = float(labels[~in_a].mean())
        plain.rows.append(i)
        plain.labels.append(labels)
        if row.predicate.hard is not None:
            keep = tr.token_mask(row.predicate.hard(text))
            if not _too_few(labels, keep, in_a):
                key = keep.tobytes()
                group = hard.setdefault(key, _Group(keep))
                group.rows.append(i)
                group.labels.append(labels)
                hard_of[i] = list(hard).index(key) + 1
    return [plain] + list(hard.values()), hard_of


def _score_trained(tr: Trace, text: str, rows: list[Row], groups: list[_Group], hard_of: dict[int, int],
                   in_a: np.ndarray, kinds: Sequence[str]) -> None:
    """Fill every scorable row's best unit, hard variant and controls."""
    scores = _score_groups(tr, groups, in_a, kinds)
    feats = {name: _token_values(tr, values) for name, values in controls(text).items()}
    for i, labels in zip(groups[0].rows, groups[0].labels):
        row = rows[i]
        row.best = scores[(0, i)]
        row.control = _best_control(tr, feats, labels, groups[0].keep, in_a, row.predicate.defines)
        if i in hard_of:
            g = hard_of[i]
            row.hard = scores[(g, i)]
            row.control_hard = _best_control(tr, feats, labels, groups[g].keep, in_a, row.predicate.defines)


def untrained_copy(model: RNNLM, seed: int) -> RNNLM:
    """The model's architecture with the initial weights of ``seed`` (lmgen's train() seeds
    torch once before building the model, so the training seed gives its start)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = RNNLM(model.config)
    return fresh.to(next(model.parameters()).device)


def build(
    model: RNNLM,
    tokenizer: Tokenizer,
    text: str,
    *,
    predicates: Sequence[Predicate] | str | None = None,
    split_at: int | None = None,
    fraction: float = 0.5,
    kinds: Sequence[str] | None = None,
    untrained: RNNLM | bool = True,
    seed: int = 0,
    dtype: str = "float32",
    chunk: int = CHUNK,
    top_k: int = 3,
    snippets: int = 2,
    allow_unknown: bool = False,
    probe: bool = False,
    probe_steps: int = 200,
    log: Callable[[str], None] | None = None,
) -> Atlas:
    """Run the atlas protocol for every predicate (default: the whole library) on ``text``.

    ``split_at``: the first character of part B (default: ``fraction`` of the tokens).
    ``untrained``: True builds the untrained control from ``seed`` (use the training
    seed), a model uses that one, False skips it. ``kinds``: activation kinds to rank
    (default all). ``dtype``/``chunk``: :func:`lmgen.activations.trace`'s. ``top_k`` and
    ``snippets``: next-token guesses and coloured snippets per row on the page.
    ``probe``: also fit :func:`lmgen.probe.logistic_probe` (``probe_steps`` steps) over the
    h and c units for every row, on A, scored on B: when no single unit reaches a predicate
    it tells "spread over many units" from "not in the model" (56 s for the 16 rows of
    200k characters of a 1 x 256 LSTM, two threads).
    """
    say = log or (lambda msg: None)
    preds = select(predicates) if predicates is None or isinstance(predicates, str) else list(predicates)
    if not preds:
        raise ConfigError("no predicate to score")
    names = [p.name for p in preds]
    if len(set(names)) < len(names):
        raise ConfigError(f"two predicates share a name: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    tr = trace(model, tokenizer, text, top_k=top_k, kinds=kinds, allow_unknown=allow_unknown, dtype=dtype,
               chunk=chunk)
    kinds = tuple(kinds) if kinds is not None else tr.kinds
    seconds["trace"] = time.perf_counter() - t0
    say(f"traced {len(tr):,} tokens in {seconds['trace']:.1f} s")
    in_a = split_positions(tr, split_at, fraction)
    rows = [Row(p) for p in preds]
    masks = {p.name: p.mask(text) for p in preds}
    groups, hard_of = _groups(tr, text, rows, masks, in_a)
    t0 = time.perf_counter()
    _score_trained(tr, text, rows, groups, hard_of, in_a, kinds)
    seconds["rank"] = time.perf_counter() - t0
    say(f"ranked {len(groups[0].rows)} predicates ({len(groups) - 1} hard variants) in {seconds['rank']:.1f} s")
    if untrained is not False:
        t0 = time.perf_counter()
        base = untrained_copy(model, seed) if untrained is True else untrained
        utr = trace(base, tokenizer, text, top_k=1, kinds=kinds, allow_unknown=allow_unknown, dtype=dtype, chunk=chunk)
        scores = _score_groups(utr, groups[:1], in_a, kinds)  # all positions only: the hard variants cost 3x more
        del utr  # the untrained activations are only needed for their scores
        for i in groups[0].rows:
            rows[i].untrained = scores[(0, i)]
        seconds["untrained"] = time.perf_counter() - t0
        say(f"untrained control in {seconds['untrained']:.1f} s")
    if probe:
        t0 = time.perf_counter()
        readable = tuple(k for k in ("h", "c") if k in tr.kinds) or tuple(tr.kinds)
        for i in groups[0].rows:
            rows[i].probe = logistic_probe(tr, masks[rows[i].predicate.name], kinds=readable, steps=probe_steps,
                                           split_at=split_at, fraction=fraction)
        seconds["probe"] = time.perf_counter() - t0
        say(f"probes in {seconds['probe']:.1f} s")
    rows.sort(key=lambda r: (r.best is None, -r.gain if r.best is not None else 0.0))
    cfg = model.config
    name = f"{cfg.cell} {cfg.layers} x {getattr(cfg, 'sizes', cfg.hidden)}, vocabulary {cfg.vocab_size}"
    settings = {"split_at": split_at, "fraction": fraction, "kinds": kinds, "seed": seed, "dtype": dtype,
                "untrained": untrained is not False, "top_k": top_k, "snippets": snippets, "probe": probe,
                "controls": dict(CONTROL_DOCS)}
    return Atlas(rows, tr, in_a, masks, name, seconds, settings)
