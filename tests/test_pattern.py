"""Pattern search (probe.find_pattern, LSTMVis's "match") on planted repeats, and readable
pictures: the heatmap wrapped in strips, the coloured text wrapping to the page width."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmgen import viz
from lmgen.activations import Trace, Unit, trace
from lmgen.config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.model import RNNLM
from lmgen.probe import find_pattern
from lmgen.tokenizer import build_tokenizer

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _planted(seed: int = 0):
    """A char-level trace: units 0-2 are 1 exactly on the planted "<...>" spans (and unit 2
    is also on the "{...}" spans, a partial match); units 3-9 are noise in [-1, 0.25)."""
    rng = np.random.default_rng(seed)
    pieces, full, partial = [], [], []
    at = 0
    for k in range(12):
        filler = "".join(rng.choice(list("abc de"), size=int(rng.integers(15, 40))))
        kind = ("<", ">") if k % 3 else ("{", "}")
        body = kind[0] + "x" * 4 + kind[1]
        pieces += [filler, body]
        at += len(filler)
        (full if kind[0] == "<" else partial).append((at, at + len(body)))
        at += len(body)
    text = "".join(pieces) + "tail"
    T = len(text)
    units = rng.uniform(-1.0, 0.25, size=(T, 10))
    for s, e in full:
        units[s:e, :3] = 1.0
    for s, e in partial:
        units[s:e, 2] = 1.0
    tr = Trace(text=text, cell="rnn", ids=np.zeros(T, np.int64), spans=np.stack([np.arange(T), np.arange(T) + 1], 1),
               layers=[{"h": units.astype(np.float32)}], top_ids=np.zeros((T, 1), np.int64),
               top_probs=np.ones((T, 1), np.float32), next_prob=np.full(T, np.nan), vocab=["<&>"])
    return tr, full, partial


def test_pattern_search_finds_the_planted_repeats():
    tr, full, partial = _planted()
    start, end = full[0]
    pattern = find_pattern(tr, start, end, 0.5)
    assert pattern.units == [Unit(0, "h", 0), Unit(0, "h", 1), Unit(0, "h", 2)]
    found = [(m.start, m.end) for m in pattern.matches]
    # every other full plant, exactly, first (score 1: all units on, all off around, same length)
    assert found[: len(full) - 1] == full[1:]
    assert all(m.score == 1.0 and m.on == 1.0 and m.off == 1.0 for m in pattern.matches[: len(full) - 1])
    # the partial plants (1 of 3 units on) are below min_share 0.5: not candidates at all
    assert not set(found) & set(partial)
    loose = find_pattern(tr, start, end, 0.5, min_share=0.3)
    tail = [(m.start, m.end) for m in loose.matches[len(full) - 1 :]]
    assert tail == partial and all(m.score == pytest.approx(1 / 3) for m in loose.matches[len(full) - 1 :])
    np.testing.assert_allclose(pattern.share, (tr.layers[0]["h"][:, :3] > 0.5).mean(axis=1))


def test_signed_pattern_search_finds_units_that_are_on_by_being_low():
    tr, full, _ = _planted()
    flipped = tr.layers[0]["h"].copy()
    flipped[:, :3] *= -1  # the pattern's units now code "inside" by -1
    tr2 = Trace(**{**tr.__dict__, "layers": [{"h": flipped}]})
    with pytest.raises(ConfigError, match="no unit of kinds h"):
        find_pattern(tr2, *full[0], 0.5)
    pattern = find_pattern(tr2, *full[0], 0.5, signed=True)
    assert pattern.units == [Unit(0, "h", j) for j in range(3)] and pattern.signs == [-1, -1, -1]
    assert [(m.start, m.end) for m in pattern.matches[: len(full) - 1]] == full[1:]
    assert "L0.h[0] (low)" in pattern.show(top=1).to_html()


def test_pattern_search_window_score_and_errors():
    tr, full, _ = _planted()
    half = len(tr.text) // 2
    pattern = find_pattern(tr, *full[0], 0.5, search=(half, len(tr.text)))
    assert [(m.start, m.end) for m in pattern.matches] == [f for f in full[1:] if f[0] >= half]
    # a longer selection (the plant and one character after, where the units are off) has no units
    with pytest.raises(ConfigError, match="no unit of kinds h is above 0.5"):
        find_pattern(tr, full[0][0], full[0][1] + 1, 0.5)
    # the score of a candidate by hand: on x off x length
    units = tr.layers[0]["h"].copy()
    s, e = full[1]
    units[s - 1, 0] = 1.0  # one unit of three on just before the second plant, and a plant one token longer
    units[e, :3] = 1.0
    tr2 = Trace(**{**tr.__dict__, "layers": [{"h": units}]})
    m = next(m for m in find_pattern(tr2, *full[0], 0.5).matches if m.start == s)
    assert (m.end, m.on, m.off, m.cover) == (e + 1, 1.0, 1.0 - (1 / 3 + 0) / 2, 1.0)  # longer: a whole match
    assert m.score == pytest.approx(1.0 * (1 - 1 / 6) * 1.0)
    # a shorter run is partial evidence: cover = its length over the selection's
    units[s:e, :3] = 1.0
    units[e - 2 : e + 1, :3] = 0.0
    units[s - 1, 0] = 0.0
    tr3 = Trace(**{**tr.__dict__, "layers": [{"h": units}]})
    m = next(m for m in find_pattern(tr3, *full[0], 0.5).matches if m.start == s)
    assert (m.end, m.cover, m.score) == (e - 2, (e - 2 - s) / (e - s), (e - 2 - s) / (e - s))
    for args, message in (((5, 5, 0.5), "0 <= start < end"), ((0, 10 ** 6, 0.5), "0 <= start < end")):
        with pytest.raises(ConfigError, match=message):
            find_pattern(tr, *args)
    with pytest.raises(ConfigError, match="min_share must be in"):
        find_pattern(tr, *full[0], 0.5, min_share=0)
    with pytest.raises(ConfigError, match="no activation kind 'c'"):
        find_pattern(tr, *full[0], 0.5, kinds=("c",))


def _brute_force_units(values, t0, t1, threshold, lag, off_after=True):
    """The pattern's units by the definition, one unit and one token at a time."""
    T, H = values.shape
    chosen = []
    for j in range(H):
        on = all(values[t, j] > threshold for t in range(t0 + lag, t1))
        off = all(values[t, j] <= threshold for t in ((t0 - 1, t1 + lag) if off_after else (t0 - 1,)) if 0 <= t < T)
        if on and off:
            chosen.append(j)
    return chosen


@pytest.mark.parametrize("delay", [1, 2, 3])
def test_a_lag_lets_units_that_switch_on_late_form_the_pattern(delay):
    """Units 0-2 respond `delay` tokens late (on over [s + delay, e + delay) of every plant),
    as a cell state that builds up: LSTMVis's rule finds nothing, a lag of `delay` finds them
    and every other plant, shifted by the delay, as an exact match."""
    tr, full, _ = _planted()
    units = tr.layers[0]["h"].copy()
    units[:, :3] = np.random.default_rng(1).uniform(-1.0, 0.25, size=(len(units), 3))
    for s, e in full:
        units[s + delay : e + delay, :3] = 1.0
    tr2 = Trace(**{**tr.__dict__, "layers": [{"h": units}]})
    s0, e0 = full[0]
    with pytest.raises(ConfigError, match="allow a lag"):
        find_pattern(tr2, s0, e0, 0.5)
    for lag in range(e0 - s0):
        expected = _brute_force_units(units, s0, e0, 0.5, lag)
        try:
            got = [u.index for u in find_pattern(tr2, s0, e0, 0.5, lag=lag).units]
        except ConfigError:
            got = []
        assert got == expected, lag
    pattern = find_pattern(tr2, s0, e0, 0.5, lag=delay)
    assert [u.index for u in pattern.units] == [0, 1, 2] and pattern.lag == delay
    found = [(m.start, m.end) for m in pattern.matches[: len(full) - 1]]
    assert found == [(s + delay, e + delay) for s, e in full[1:]]  # the selection's own run has the plants' length
    assert all(m.score == 1.0 for m in pattern.matches[: len(full) - 1])
    with pytest.raises(ConfigError, match="lag must be in"):
        find_pattern(tr2, s0, e0, 0.5, lag=e0 - s0)


def test_off_after_false_keeps_units_that_fade_slowly():
    """Units 0-2 stay on 3 tokens past every plant: the test after the selection drops them,
    off_after=False keeps them; the brute-force definition agrees either way; equal scores
    put the longer run first."""
    tr, full, _ = _planted()
    units = tr.layers[0]["h"].copy()
    for s, e in full:
        units[s : e + 3, :3] = 1.0
    tr2 = Trace(**{**tr.__dict__, "layers": [{"h": units}]})
    s0, e0 = full[0]
    with pytest.raises(ConfigError, match="off_after=False"):
        find_pattern(tr2, s0, e0, 0.5)
    pattern = find_pattern(tr2, s0, e0, 0.5, off_after=False)
    assert [u.index for u in pattern.units] == [0, 1, 2] and not pattern.off_after
    assert _brute_force_units(units, s0, e0, 0.5, 0, off_after=False) == [0, 1, 2]
    assert _brute_force_units(units, s0, e0, 0.5, 0) == []
    found = [(m.start, m.end) for m in pattern.matches[: len(full) - 1]]
    assert found == [(s, e + 3) for s, e in full[1:]] and all(m.score == 1.0 for m in pattern.matches[:3])
    scores = [(m.score, m.t1 - m.t0) for m in pattern.matches]
    assert scores == sorted(scores, key=lambda x: (-x[0], -x[1]))


def test_pattern_view_shows_selection_and_matches_escaped(tmp_path):
    tr, full, _ = _planted()
    pattern = find_pattern(tr, *full[0], 0.5)
    view = pattern.show(top=3, context=5)
    page = view.save(tmp_path / "p.html").read_text(encoding="utf-8")
    assert page.count('class="lmgen-viz"') == 4  # the selection and 3 matches
    assert "match 3: score 1.000" in page and "3 units" in page
    assert '<span class="tok in"' in page  # the matches are underlined
    assert ">&lt;</span>" in page and "<x" not in page
    assert pattern._repr_html_() == pattern.show().to_html()


# -- readable pictures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_trace():
    text = ("def f(x):\n    return [x, 'http://a.org/b']  # see (this)\n" * 12)[:500]
    tok = build_tokenizer("char", [text])
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=tok.vocab_size, embed=8, hidden=16, layers=2))
    return trace(model, tok, text)


def test_heatmap_of_500_characters_wraps_in_strips(long_trace):
    tr = long_trace
    units = [Unit(1, "h", j) for j in range(6)] + [Unit(0, "f", 3)]
    fig = viz.heatmap(tr, units, window=(0, 500), line=80)
    assert len(fig.axes) == 7  # ceil(500 / 80) strips, not one strip 500 tokens wide
    width, height = fig.get_size_inches() * fig.dpi
    assert width < 1500 and height > width / 2
    labels = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert labels == [viz._visible(c) for c in tr.text[:500]]  # every token once, in order
    assert all(len(ax.get_xticklabels()) == 80 for ax in fig.axes[:-1]) and len(fig.axes[-1].get_xticklabels()) == 20
    for ax in fig.axes:  # one colour scale for all strips: the largest |value| of the window
        assert ax.images[0].get_clim() == fig.axes[0].images[0].get_clim()
    m = max(abs(tr.unit(u.layer, u.kind, u.index)[:500] - (0.5 if u.kind == "f" else 0)).max() for u in units)
    assert fig.axes[0].images[0].get_clim()[1] == pytest.approx(m)
    # the values of strip 2 are the window's tokens 80..159
    np.testing.assert_allclose(fig.axes[1].images[0].get_array()[0], tr.unit(1, "h", 0)[80:160], rtol=1e-6)
    import matplotlib.pyplot as plt

    fig2, ax = plt.subplots()
    assert viz.heatmap(tr, units, window=(0, 200), ax=ax) is fig2 and len(fig2.axes) == 1  # given axes: one strip
    with pytest.raises(ConfigError, match="line must be >= 1"):
        viz.heatmap(tr, units, line=0)
    plt.close("all")


def test_coloured_text_wraps_to_the_page_width(long_trace):
    page = viz.show(long_trace, 0, "c", 1).to_html()
    assert page.count("<wbr>") == len(long_trace)  # a break opportunity after every token
    assert ".lmgen-viz .text { white-space: normal; overflow-wrap: anywhere; max-width: 100%; }" in page
    assert '<div class="text">' in page
    marked = viz.show(long_trace, 0, "c", 1, marks=np.array([c == "x" for c in long_trace.text])).to_html()
    assert marked.count('class="tok in"') == long_trace.text.count("x")
