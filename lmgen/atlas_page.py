"""The atlas as one standalone HTML page: the table, then per predicate a histogram
(inline SVG, inside against outside on part B) and coloured snippets from part B with the
model's top-k guesses (:func:`lmgen.viz.show`). Every piece of text is HTML-escaped."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from .predicates import CONTROL_DOCS
from .viz import show

if TYPE_CHECKING:
    from .atlas import Atlas, Row

# Characters of text in one snippet, and how far before the predicate's run it starts.
SNIPPET_CHARS = 160
SNIPPET_LEAD = 50
# A gain at least this large is highlighted (the aim for a "found" unit).
GOOD_GAIN = 0.10

_TABLE_CSS = """
table.atlas { border-collapse: collapse; font-size: 13px; }
table.atlas th, table.atlas td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.atlas td.l, table.atlas th.l { text-align: left; }
td.good { background: #d9f2d9; font-weight: bold; }
.doc { color: #555; font-size: 12px; }
section.row { margin-top: 2em; border-top: 2px solid #999; padding-top: 0.5em; }
.snip { margin: 0.6em 0; }
"""
_CSS = "body { font-family: sans-serif; margin: 1.5em; max-width: 80em; }" + _TABLE_CSS


def svg_histogram(inside: np.ndarray, outside: np.ndarray, *, bins: int = 40, width: int = 380,
                  height: int = 130, label: str = "") -> str:
    """Two step histograms (share of positions per bin) as an inline SVG: red inside, blue outside."""
    both = np.concatenate([inside, outside]).astype(np.float64)
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    left, right, top, bottom = 8, 8, 18, 22
    w, h = width - left - right, height - top - bottom
    series = []
    for values in (inside, outside):
        counts = np.histogram(np.asarray(values, dtype=np.float64), edges)[0]
        series.append(counts / max(len(values), 1))
    peak = max(float(s.max()) for s in series) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="font: 10px sans-serif">']
    for share, color in zip(series, ("#d62728", "#1f77b4")):
        points = []
        for k, v in enumerate(share):
            y = top + h - v / peak * h
            points += [f"{left + k * w / bins:.1f},{y:.1f}", f"{left + (k + 1) * w / bins:.1f},{y:.1f}"]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(points)}"/>')
    parts.append(f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#888"/>')
    parts.append(f'<text x="{left}" y="{height - 6}">{lo:.3g}</text>')
    parts.append(f'<text x="{left + w}" y="{height - 6}" text-anchor="end">{hi:.3g}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">{html.escape(label)}</text>')
    parts.append(f'<text x="{left}" y="12" fill="#d62728">inside ({len(inside)})</text>')
    parts.append(f'<text x="{left + w}" y="12" fill="#1f77b4" text-anchor="end">outside ({len(outside)})</text>')
    parts.append("</svg>")
    return "".join(parts)


def snippet_windows(atlas: Atlas, labels: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` character windows in part B, each starting a little before a run of
    inside tokens, the runs spread over part B."""
    tr = atlas.trace
    in_b = ~atlas.in_a
    starts = np.flatnonzero(labels & in_b & ~np.concatenate([[False], labels[:-1]]))
    if not len(starts) or count < 1:
        return []
    b_start = int(tr.spans[np.argmax(in_b), 0])
    picks = np.unique(np.linspace(0, len(starts) - 1, count).round().astype(int))
    out = []
    for t in starts[picks]:
        lo = max(b_start, int(tr.spans[t, 0]) - SNIPPET_LEAD)
        out.append((lo, min(len(tr.text), lo + SNIPPET_CHARS)))
    return out


def _fmt(score, attr: str = "auroc_b") -> str:
    return f"{getattr(score, attr):.3f}" if score is not None else "&ndash;"


def _table(atlas: Atlas) -> str:
    e = html.escape
    probed = any(r.probe is not None for r in atlas.rows)
    head = ("<tr><th>#</th><th class='l'>predicate</th><th>inside (B)</th><th class='l'>unit</th>"
            "<th>AUROC A</th><th>AUROC B</th><th>hard B</th><th>untrained B</th>"
            "<th class='l'>best control</th><th>control B</th><th>gain</th>"
            + ("<th title='a sparse logistic probe over all h and c units, fitted on part A'>probe B</th>"
               if probed else "") + "</tr>")
    lines = ["<table class='atlas'>", head]
    for n, r in enumerate(atlas.rows, 1):
        name = e(r.predicate.name)
        if r.best is None:
            lines.append(f"<tr><td>{n}</td><td class='l'>{name}</td><td class='l' colspan='{9 + probed}'>skipped: "
                         f"{e(r.skipped)}</td></tr>")
            continue
        sign = "+" if r.best.sign > 0 else "&minus;"
        hard_title = e(f"hard positions: {r.predicate.hard_doc}; unit {r.hard.unit}" if r.hard else "", quote=True)
        control = e(f"{r.control.name} ({'+' if r.control.sign > 0 else '-'})")
        control_title = e(CONTROL_DOCS.get(r.control.name, ""), quote=True)
        good = " class='good'" if r.gain >= GOOD_GAIN else ""
        lines.append(
            f"<tr><td>{n}</td><td class='l'><a href='#p-{name}'>{name}</a><div class='doc'>"
            f"{e(r.predicate.doc)}</div></td><td>{r.inside:.1%}</td><td class='l'>{e(str(r.best.unit))} {sign}</td>"
            f"<td>{r.best.auroc_a:.3f}</td><td>{r.best.auroc_b:.3f}</td><td title='{hard_title}'>{_fmt(r.hard)}</td>"
            f"<td>{_fmt(r.untrained)}</td><td class='l' title='{control_title}'>{control}</td>"
            f"<td>{r.control.auroc_b:.3f}</td><td{good}>{r.gain:+.3f}</td>"
            + (f"<td title='{r.probe.nonzero} units'>{_fmt(r.probe)}</td>" if probed else "") + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def table_fragment(atlas: Atlas) -> str:
    """The table with its own style, to show inside another page (a notebook)."""
    return f"<div><style>{_TABLE_CSS}</style>{_table(atlas)}</div>"


def _section(atlas: Atlas, row: Row) -> str:
    e = html.escape
    tr, best = atlas.trace, row.best
    mask = atlas.masks[row.predicate.name]
    labels = tr.token_mask(mask)
    in_b = ~atlas.in_a
    values = tr.unit(best.unit.layer, best.unit.kind, best.unit.index).astype(np.float64) * best.sign
    svg = svg_histogram(values[labels & in_b], values[~labels & in_b],
                        label=f"{best.unit} {'x +1' if best.sign > 0 else 'x -1'}, part B")
    facts = [f"best unit {best.unit} (sign {'+' if best.sign > 0 else '-'}): AUROC A {best.auroc_a:.3f}, "
             f"B {best.auroc_b:.3f}"]
    if row.hard is not None:
        facts.append(f"hard ({row.predicate.hard_doc}): {row.hard.unit} B {row.hard.auroc_b:.3f}, "
                     f"best control {row.control_hard.name} {row.control_hard.auroc_b:.3f}")
    if row.untrained is not None:
        facts.append(f"untrained model: {row.untrained.unit} B {row.untrained.auroc_b:.3f}")
    if row.probe is not None:
        top = ", ".join(f"{u} {w:+.2f}" for u, w in row.probe.top_units(5))
        facts.append(f"sparse logistic probe over h and c ({row.probe.nonzero} units): A {row.probe.auroc_a:.3f}, "
                     f"B {row.probe.auroc_b:.3f}; heaviest: {top}")
    facts.append(f"best trivial control: {row.control.name} ({CONTROL_DOCS.get(row.control.name, '')}) "
                 f"B {row.control.auroc_b:.3f}; gain {row.gain:+.3f}")
    parts = [f"<section class='row' id='p-{e(row.predicate.name, quote=True)}'><h3>{e(row.predicate.name)}</h3>",
             f"<div class='doc'>{e(row.predicate.doc)}</div><ul>",
             "".join(f"<li>{e(f)}</li>" for f in facts), f"</ul>{svg}"]
    k = atlas.settings.get("top_k", 3)
    for lo, hi in snippet_windows(atlas, labels, atlas.settings.get("snippets", 2)):
        view = show(tr, best.unit.layer, best.unit.kind, best.unit.index, sign=best.sign, top_k=k, rows=True,
                    window=(lo, hi), marks=mask, note=f"characters {lo:,}-{hi:,} (underlined: inside)")
        parts.append(f"<div class='snip'>{view.to_html()}</div>")
    parts.append("</section>")
    return "".join(parts)


def render(atlas: Atlas) -> str:
    """The whole page as one string (no external files, scripts or fonts)."""
    e = html.escape
    tr = atlas.trace
    a_tokens = int(atlas.in_a.sum())
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in atlas.seconds.items())
    controls = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in CONTROL_DOCS.items())
    intro = (
        f"<p>Model: {e(atlas.model)}. Text: {len(tr.text):,} characters, {len(tr):,} tokens; part A (choose) "
        f"{a_tokens:,} tokens, part B (report) {len(tr) - a_tokens:,}. Time: {e(timing)}.</p>"
        "<p class='doc'>For every predicate, the (unit, sign) with the best AUROC on part A is reported with its "
        "AUROC on part B; hard: the same on the predicate's look-alike positions; untrained: the same protocol on "
        "the untrained model; control: the best trivial feature on part B. Gain = AUROC B &minus; the best of "
        f"control and untrained; rows are sorted by it, and a gain of at least {GOOD_GAIN:.2f} is highlighted.</p>"
    )
    sections = "".join(_section(atlas, r) for r in atlas.rows if r.best is not None)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>lmgen neuron atlas</title>"
        f"<style>{_CSS}</style></head><body><h1>Neuron atlas</h1>{intro}{_table(atlas)}"
        f"<details><summary>trivial controls</summary><ul class='doc'>{controls}</ul></details>"
        f"{sections}</body></html>\n"
    )
