"""Showing what a unit does: coloured text (HTML), heatmaps, histograms, gate saturation,
and the vanishing-gradient view (its numbers come from :mod:`lmgen.gradients`).

The classic figure (Karpathy, Johnson & Fei-Fei 2015): every character of the text
coloured by one unit's value after reading it, and under it the model's top guesses for
the next character, shaded by probability::

      h   t   t   p   :   /   /   w   w   w          <- text, background = unit value
      t   t   p   s   /   /   w   w   w   .          <- most likely next character
      e   p   .   :   a   e   e   i   .   e          <- 2nd ...

    >>> view = show(tr, layer=0, kind="c", index=37)    # doctest: +SKIP
    >>> view                                             # Jupyter renders it (_repr_html_)
    >>> view.save("unit.html")                           # a standalone page, no server

All text is HTML-escaped: a corpus containing ``<script>`` shows it, never runs it.
matplotlib is imported inside the plotting functions, so ``import lmgen.viz`` is cheap.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .activations import Trace, Unit
from .cells import SIGMOID_KINDS
from .errors import ConfigError
from .gradients import gradient_norms, vanishing_gradient_norms  # noqa: F401 (lmgen.viz.gradient_norms stays)

# Above this many tokens the top-k guesses go into the hover text only (page size).
ROWS_LIMIT = 4000

_CSS = """
.lmgen-viz { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; line-height: 1.2; }
.lmgen-viz .tok { display: inline-block; vertical-align: top; text-align: center; min-width: 0.65em;
                  margin: 0 0 4px 0; }
.lmgen-viz .ch { display: block; padding: 1px 0; white-space: pre; }
.lmgen-viz .pr { display: block; font-size: 10px; color: #222; white-space: pre; }
.lmgen-viz .gap { white-space: pre; vertical-align: top; }
.lmgen-viz .legend span { display: inline-block; width: 2.2em; text-align: center; font-size: 10px; }
.lmgen-viz .head { font-family: sans-serif; margin-bottom: 6px; }
.lmgen-viz .text { white-space: normal; overflow-wrap: anywhere; max-width: 100%; }
.lmgen-viz .tok.in .ch { box-shadow: inset 0 -2px 0 #000; }
"""


def colour(value: float, center: float = 0.0, scale: float = 1.0) -> str:
    """Diverging colour of ``value``: blue below ``center``, white at it, red above;
    full colour at ``center +- scale``; grey for NaN.

    >>> colour(1.0), colour(0.0), colour(-1.0)
    ('rgb(214,39,40)', 'rgb(255,255,255)', 'rgb(31,119,180)')
    """
    if value != value:  # NaN
        return "rgb(230,230,230)"
    t = max(-1.0, min(1.0, (value - center) / scale if scale > 0 else 0.0))
    end = (214, 39, 40) if t > 0 else (31, 119, 180)
    a = abs(t)
    r, g, b = (round(255 + (e - 255) * a) for e in end)
    return f"rgb({r},{g},{b})"


def _visible(piece: str) -> str:
    """A token as shown in a prediction cell: whitespace made visible."""
    return piece.replace("\n", "\u21b5").replace(" ", "\u2423").replace("\t", "\u21e5") or "\u2205"


def default_scale(kind: str, values: np.ndarray) -> tuple[float, float]:
    """(center, scale) for a unit's colours: gates around 0.5, h and n in [-1, 1],
    the unbounded cell state by its largest magnitude."""
    if kind in SIGMOID_KINDS:
        return 0.5, 0.5
    if kind == "c":
        m = float(np.nanmax(np.abs(values))) if len(values) else 1.0
        return 0.0, m if m > 0 else 1.0
    return 0.0, 1.0


@dataclass
class UnitView:
    """One unit over a traced text, ready to show: ``_repr_html_`` (Jupyter), ``to_html``,
    ``save(path)``. Build it with :func:`show`."""

    trace: Trace
    unit: Unit
    values: np.ndarray  # [T]
    center: float
    scale: float
    top_k: int
    rows: bool
    start: int  # character window [start, stop) of the text to show
    stop: int
    note: str = ""
    marks: np.ndarray | None = None  # [T] tokens to underline (e.g. inside a predicate), or None
    label: str = ""  # shown in place of the unit's name (values that are not one unit's)

    def _fragment(self) -> str:
        tr = self.trace
        e = html.escape
        name = self.label or f"{self.unit} ({_KIND_NAMES.get(self.unit.kind, self.unit.kind)})"
        legend = "".join(
            f'<span style="background:{colour(self.center + v * self.scale, self.center, self.scale)}">'
            f"{self.center + v * self.scale:.2g}</span>"
            for v in (-1, -0.5, 0, 0.5, 1)
        )
        parts = [
            f'<div class="lmgen-viz"><style>{_CSS}</style>',
            f'<div class="head"><b>{e(name)}</b> {e(self.note)} '
            f'<span class="legend">{legend}</span></div><div class="text">',
        ]
        k = min(self.top_k, tr.top_ids.shape[1])
        cursor = self.start
        for t in range(len(tr)):
            s, end = int(tr.spans[t, 0]), int(tr.spans[t, 1])
            if end <= self.start or s >= self.stop:
                continue
            if s > cursor:  # text no token covers (spaces between words)
                parts.append(f'<span class="gap">{e(tr.text[cursor:s])}</span>')
            piece = tr.text[s:end]
            v = float(self.values[t])
            guesses = [(tr.piece(int(tr.top_ids[t, j])), float(tr.top_probs[t, j])) for j in range(k)]
            hover = f"{self.label or self.unit} = {v:.4f}"
            if tr.next_prob[t] == tr.next_prob[t]:
                hover += f"\np(next actual) = {tr.next_prob[t]:.3f}"
            hover += "".join(f"\n{_visible(g)!s}  {p:.3f}" for g, p in guesses)
            shown = piece.replace("\n", "\u21b5")
            cell = f'<span class="ch" style="background:{colour(v, self.center, self.scale)}">{e(shown)}</span>'
            rows = ""
            if self.rows:
                rows = "".join(
                    f'<span class="pr" style="background:rgba(40,160,40,{p:.2f})">{e(_visible(g))}</span>'
                    for g, p in guesses
                )
            css = "tok in" if self.marks is not None and self.marks[t] else "tok"
            # <wbr>: a line may break after every token, so long lines wrap to the page
            # width even where a notebook's CSS would keep inline blocks on one line
            parts.append(f'<span class="{css}" title="{e(hover, quote=True)}">{cell}{rows}</span><wbr>')
            if "\n" in piece:
                parts.append("<br>")
            cursor = end
        if cursor < self.stop:
            parts.append(f'<span class="gap">{e(tr.text[cursor:self.stop])}</span>')
        parts.append("</div></div>")
        return "".join(parts)

    def to_html(self, standalone: bool = False) -> str:
        """The view as an HTML fragment, or a whole page with ``standalone=True``."""
        body = self._fragment()
        if not standalone:
            return body
        title = html.escape(f"lmgen: {self.unit}")
        return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
                f"<body>{body}</body></html>\n")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        # short on purpose: the default dataclass repr printed the whole trace (~450 KB),
        # which Jupyter stores beside the HTML in every saved notebook
        return (f"<lmgen UnitView {self.unit}, characters {self.start:,}-{self.stop:,} of {len(self.trace.text):,}: "
                f"coloured HTML in Jupyter; .save(path) writes a page>")

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page (UTF-8); returns the path."""
        path = Path(path)
        path.write_text(self.to_html(standalone=True), encoding="utf-8")
        return path


_KIND_NAMES = {"h": "hidden", "c": "cell", "i": "input gate", "f": "forget gate", "o": "output gate",
               "g": "candidate", "r": "reset gate", "z": "update gate", "n": "new state"}


def show(
    trace: Trace,
    layer: int = 0,
    kind: str = "h",
    index: int = 0,
    *,
    sign: int = 1,
    top_k: int = 5,
    rows: bool | None = None,
    window: tuple[int, int] | None = None,
    note: str = "",
    marks: np.ndarray | None = None,
) -> UnitView:
    """Colour the text of ``trace`` by one unit, with the top-k next-token guesses.

    ``sign=-1`` flips the colours (a unit that is low inside). ``rows``: guesses as rows
    under the text (default when the window has at most ROWS_LIMIT tokens) or only on
    hover. ``window=(start, stop)``: show only these characters of the text. ``marks``:
    a boolean mask over the characters (a predicate, a pattern's matches): its tokens
    are underlined.
    """
    unit = trace.check_unit(layer, kind, index)
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0, got {top_k}")
    start, stop = window if window is not None else (0, len(trace.text))
    if not 0 <= start < stop <= len(trace.text):
        raise ConfigError(f"window must satisfy 0 <= start < stop <= {len(trace.text)}, got {window}")
    values = trace.unit(layer, kind, index) * (1 if sign >= 0 else -1)
    center, scale = default_scale(kind, values)
    if sign < 0:
        center = -center
    shown = int(((trace.spans[:, 1] > start) & (trace.spans[:, 0] < stop)).sum())
    if rows is None:
        rows = shown <= ROWS_LIMIT
    token_marks = trace.token_mask(marks) if marks is not None else None
    return UnitView(trace, unit, values, center, scale, top_k, bool(rows), start, stop, note, token_marks)


def show_values(trace: Trace, values: np.ndarray, *, label: str, center: float = 0.0, scale: float = 1.0,
                top_k: int = 3, rows: bool | None = None, window: tuple[int, int] | None = None, note: str = "",
                marks: np.ndarray | None = None) -> UnitView:
    """:func:`show` for any per-token values [T] (a pattern's share of units on, a probe's
    score), named ``label``, coloured around ``center`` with full colour at ``center +- scale``."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(trace),):
        raise ConfigError(f"values have shape {values.shape}, the trace has {len(trace)} tokens")
    start, stop = window if window is not None else (0, len(trace.text))
    if not 0 <= start < stop <= len(trace.text):
        raise ConfigError(f"window must satisfy 0 <= start < stop <= {len(trace.text)}, got {window}")
    if rows is None:
        rows = int(((trace.spans[:, 1] > start) & (trace.spans[:, 0] < stop)).sum()) <= ROWS_LIMIT
    token_marks = trace.token_mask(marks) if marks is not None else None
    return UnitView(trace, Unit(-1, "values", 0), values, center, scale, top_k, bool(rows), start, stop, note,
                    token_marks, label)


@dataclass
class PatternView:
    """A pattern's selection and its best matches as coloured snippets (:func:`show_pattern`)."""

    head: str  # HTML
    views: list[UnitView]

    def to_html(self, standalone: bool = False) -> str:
        body = self.head + "".join(f'<div style="margin:6px 0">{v.to_html()}</div>' for v in self.views)
        if not standalone:
            return body
        return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>lmgen: pattern search</title></head>'
                f"<body>{body}</body></html>\n")

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_html(standalone=True), encoding="utf-8")
        return path


def show_pattern(pattern: Any, top: int = 10, context: int = 30) -> PatternView:
    """The selection of a :class:`lmgen.probe.Pattern`, then its ``top`` matches, each with
    ``context`` characters around it: coloured by the share of the pattern's units on,
    the selection and the matches underlined."""
    tr = pattern.trace
    marks = np.zeros(len(tr.text), dtype=bool)
    marks[pattern.start : pattern.end] = True
    for m in pattern.matches[:top]:
        marks[m.start : m.end] = True
    signs = pattern.signs or [1] * len(pattern.units)
    names = ", ".join(f"{u}{' (low)' if s < 0 else ''}" for u, s in zip(pattern.units[:12], signs))
    names += " ..." if len(pattern.units) > 12 else ""
    head = (f'<div style="font-family:sans-serif"><b>pattern</b> of {len(pattern.units)} units on in characters '
            f"{pattern.start:,}-{pattern.end:,} (value &gt; {pattern.threshold:g}): {html.escape(names)}; "
            f"{len(pattern.matches):,} other places, the best {min(top, len(pattern.matches))} below</div>")
    label = f"share of the {len(pattern.units)} units on"

    def view(lo: int, hi: int, note: str) -> UnitView:
        window = (max(0, lo - context), min(len(tr.text), hi + context))
        return show_values(tr, pattern.share, label=label, center=0.0, scale=1.0, window=window, note=note,
                           marks=marks, top_k=3)

    views = [view(pattern.start, pattern.end, "the selection")]
    views += [view(m.start, m.end, f"match {k}: score {m.score:.3f} (on {m.on:.2f}, off {m.off:.2f})")
              for k, m in enumerate(pattern.matches[:top], 1)]
    return PatternView(head, views)


# --- matplotlib figures ----------------------------------------------------------------


def _axes(ax: Any = None, figsize=(10, 3)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def heatmap(trace: Trace, units: Sequence[Unit] | None = None, *, window: tuple[int, int] | None = None,
            ax: Any = None, line: int = 80):
    """Many units (rows) over the tokens of ``window`` (columns), diverging colours.

    Default units: the first 32 hidden units of the last layer; default window: the first
    120 characters. Wrapped as text is: at most ``line`` tokens per strip, strips stacked
    top to bottom and sharing one colour scale (a 500-character window is 7 strips, not
    one picture 5,000 pixels wide). With ``ax``, one strip on that axes. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if units is None:
        units = [Unit(trace.num_layers - 1, "h", j) for j in range(min(32, trace.layers[-1]["h"].shape[1]))]
    if not units:
        raise ConfigError("heatmap needs at least one unit")
    if line < 1:
        raise ConfigError(f"line must be >= 1 token, got {line}")
    start, stop = window if window is not None else (0, min(len(trace.text), 120))
    cols = np.flatnonzero((trace.spans[:, 1] > start) & (trace.spans[:, 0] < stop))
    if not len(cols):
        raise ConfigError(f"no token of the text lies in window {window}")
    data = np.stack([trace.unit(u.layer, u.kind, u.index)[cols].astype(np.float64)
                     - (0.5 if u.kind in SIGMOID_KINDS else 0) for u in units])  # [units, tokens]
    m = float(np.abs(data).max()) or 1.0
    labels = [_visible(trace.text[trace.spans[t, 0]:trace.spans[t, 1]]) for t in cols]
    if ax is not None:
        strips, axes = [slice(0, len(cols))], [ax]
        fig = ax.figure
    else:
        strips = [slice(j, j + line) for j in range(0, len(cols), line)]
        width = min(len(cols), line)
        fig, grid = plt.subplots(len(strips), 1, squeeze=False,
                                 figsize=(max(4.0, 1.2 + width * 0.12), len(strips) * (0.6 + len(units) * 0.13)))
        axes = list(grid[:, 0])
    for ax_, part in zip(axes, strips):
        block = data[:, part]
        if ax is None and block.shape[1] < line:  # a short last strip keeps the others' scale
            block = np.pad(block, ((0, 0), (0, line - block.shape[1])), constant_values=np.nan)
        ax_.imshow(block, aspect="auto", cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        ax_.set_yticks(range(len(units)), [str(u) for u in units], fontsize=7)
        ax_.set_xticks(range(len(labels[part])), labels[part], fontsize=7, family="monospace")
    axes[0].set_title("unit values after each token (gates centred on 0.5)")
    if ax is None:
        fig.tight_layout()
    return fig


def histogram(trace: Trace, unit: Unit, char_mask: np.ndarray, *, bins: int = 50, ax: Any = None,
              labels: tuple[str, str] = ("inside", "outside")):
    """Distribution of one unit inside vs outside a predicate (density histograms)."""
    values = trace.unit(unit.layer, unit.kind, unit.index)
    inside = trace.token_mask(char_mask)
    fig, ax = _axes(ax, figsize=(6, 3))
    edges = np.histogram_bin_edges(values, bins=bins)
    ax.hist(values[inside], bins=edges, density=True, alpha=0.6, label=f"{labels[0]} ({int(inside.sum())})")
    ax.hist(values[~inside], bins=edges, density=True, alpha=0.6, label=f"{labels[1]} ({int((~inside).sum())})")
    ax.set_xlabel(str(unit))
    ax.set_ylabel("density")
    ax.legend()
    return fig


def saturation(trace: Trace, low: float = 0.1,
               high: float = 0.9) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """For every layer and sigmoid gate: the fraction of steps each unit is left-saturated
    (< ``low``) and right-saturated (> ``high``), two arrays [H]."""
    out = {}
    for layer, acts in enumerate(trace.layers):
        for kind, values in acts.items():
            if kind in SIGMOID_KINDS:
                out[(layer, kind)] = ((values < low).mean(axis=0), (values > high).mean(axis=0))
    if not out:
        raise ConfigError(f"a {trace.cell} model has no gates (or the trace kept none): nothing to plot")
    return out


def gate_saturation(trace: Trace, low: float = 0.1, high: float = 0.9):
    """Karpathy et al. 2015, fig. 3: one panel per layer, one dot per (unit, gate) at
    (fraction of time left-saturated, fraction right-saturated). Returns the figure."""
    import matplotlib.pyplot as plt

    sat = saturation(trace, low, high)
    layers = sorted({layer for layer, _ in sat})
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for (lay, kind), (left, right) in sat.items():
            if lay == layer:
                ax.scatter(left, right, s=8, alpha=0.6, label=_KIND_NAMES[kind])
        ax.plot([0, 1], [1, 0], color="grey", lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(f"fraction < {low}")
    axes[0][0].set_ylabel(f"fraction > {high}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def vanishing_gradients(cells: Sequence[str] = ("rnn", "gru", "lstm"), *, ax: Any = None, **options: Any):
    """Plot ||d loss_t / d h_{t-k}|| against k (log scale) for a tanh RNN, a GRU and an
    LSTM: the RNN's gradient shrinks geometrically, the gated cells' far less.

    The numbers are :func:`lmgen.gradients.vanishing_gradient_norms`', with its keyword
    ``options``: ``steps=60``, ``hidden=64``, ``vocab=30``, ``batch=16``, ``seed=0``.
    Default: freshly initialised models (lmgen's init: LSTM forget bias 1) on random
    tokens; pass ``models={"name": model}`` (e.g. briefly trained ones) and they are used
    instead. Returns ``(figure, {name: norms [steps]})``.
    """
    results = vanishing_gradient_norms(cells, **options)
    fig, ax = _axes(ax, figsize=(6, 3.5))
    for name, norms in results.items():
        ax.semilogy(np.arange(len(norms)), np.maximum(norms, 1e-30), label=name)
    ax.set_xlabel("k (steps back)")
    ax.set_ylabel("||d loss_t / d h_(t-k)||")
    ax.set_title("vanishing gradients")
    ax.legend()
    return fig, results
