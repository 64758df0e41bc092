"""The neuron atlas: bounded-memory trace (chunks, float16), the predicate library against
hand-made masks, atlas AUROCs against probe.rank_units, the HTML page and `lmgen atlas`."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
import torch

from lmgen import predicates as P
from lmgen.activations import trace
from lmgen.atlas import _SortedBlock, build, untrained_copy
from lmgen.cli import main
from lmgen.cli.atlas import split_point
from lmgen.config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.model import RNNLM
from lmgen.probe import average_ranks, logistic_probe, rank_units, run_length, score_feature
from lmgen.tokenizer import build_tokenizer

CODE = '''import os  # the os module


def f(a, b=(1, 2)):
    """Add "a" to b.

    Return It. The end!
    """
    s = 'it\\'s (not) # a comment'
    if a:
        return [a, {b: "x(y)"}]  # nested (see http://x.org/p?q=1)
    return f(f(a, 0), 1)
'''
TEXT = CODE * 4


def _model(cell="lstm", vocab=60, hidden=12, layers=2, seed=0) -> RNNLM:
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=vocab, embed=7, hidden=hidden, layers=layers))
    with torch.no_grad():  # larger recurrent weights: gates leave their linear range, the state matters
        for p in model.rnn.parameters():
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("char", [TEXT + "<>&;!"])


# -- trace: chunks with the state carried, float16 storage ---------------------------------------


@pytest.mark.parametrize("cell,hidden", [("lstm", 12), ("gru", 12), ("rnn", 12), ("lstm", [12, 9]), ("gru", [5, 11])])
@pytest.mark.parametrize("start_with_end", [True, False])
def test_chunked_trace_equals_one_pass(tok, cell, hidden, start_with_end):
    model = _model(cell, tok.vocab_size, hidden=hidden, layers=2)
    text = TEXT[:300]
    whole = trace(model, tok, text, chunk=10**6, start_with_end=start_with_end)
    for chunk in (1, 7, 64):
        part = trace(model, tok, text, chunk=chunk, start_with_end=start_with_end)
        for layer, acts in enumerate(whole.layers):
            assert set(part.layers[layer]) == set(acts)
            for kind, values in acts.items():
                assert part.layers[layer][kind].shape == values.shape
                np.testing.assert_allclose(part.layers[layer][kind], values, atol=1e-5, rtol=1e-5,
                                           err_msg=f"chunk {chunk} layer {layer} kind {kind}")
        np.testing.assert_allclose(part.top_probs, whole.top_probs, atol=1e-6)
        np.testing.assert_allclose(part.next_prob, whole.next_prob, atol=1e-6)
        assert np.isnan(part.next_prob[-1]) and np.isfinite(part.next_prob[:-1]).all()
        assert (part.top_ids[:, 0] == whole.top_ids[:, 0]).mean() > 0.99  # argmax may flip only on exact ties


def test_chunked_trace_final_state_equals_the_models_forward(tok):
    """The state carried over 5 chunks ends where the model's own fused forward ends."""
    model = _model("lstm", tok.vocab_size)
    tr = trace(model, tok, TEXT, chunk=97)
    ids = [tok.end_id] + tok.encode(TEXT)
    with torch.no_grad():
        _, (h, c) = model(torch.tensor([ids]))
    for layer in range(2):
        np.testing.assert_allclose(tr.layers[layer]["h"][-1], h[layer, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(tr.layers[layer]["c"][-1], c[layer, 0].numpy(), atol=1e-5)


def test_float16_storage_is_close_and_half_the_size(tok):
    model = _model("lstm", tok.vocab_size)
    full = trace(model, tok, TEXT, chunk=50)
    half = trace(model, tok, TEXT, chunk=50, dtype="float16")
    for acts32, acts16 in zip(full.layers, half.layers):
        for kind, values in acts32.items():
            assert acts16[kind].dtype == np.float16 and values.dtype == np.float32
            assert acts16[kind].nbytes * 2 == values.nbytes
            np.testing.assert_allclose(acts16[kind].astype(np.float32), values, rtol=1e-3, atol=1e-3)
    assert half.layers[0]["c"].dtype == trace(model, tok, "abc", dtype=torch.float16).layers[0]["c"].dtype
    with pytest.raises(ConfigError, match="dtype must be one of float32, float16, got 'int8'"):
        trace(model, tok, "abc", dtype="int8")
    with pytest.raises(ConfigError, match="chunk must be >= 1"):
        trace(model, tok, "abc", chunk=0)


# -- the predicate library and the controls ------------------------------------------------------


def _marks(text: str, mask: np.ndarray) -> str:
    return "".join("^" if m else " " for m in mask)


@pytest.mark.parametrize("name,text,expected", [  # "~" is a line break, checked by eye
    ("string_literal", "x = 'a' + \"b#\" + '''c~'d'''  # 'no'", "    ^^    ^^^    ^^^^^^^^^         "),
    ("comment", "x = 'a#b'  # c 'd'~y = 1 # e", "           ^^^^^^^       ^^^"),
    ("string_literal", "'open~x = \"a\\\"b\" ", "^^^^^     ^^^^^  "),  # unterminated; an escaped quote
    ("docstring", 'def f():~    """Doc "x".~    """~    return "y"', " " * 13 + "^" * 18 + " " * 16),
    ("double_quotes", 'say "hi" and "yo~"', "    ^^^           "),
    ("parentheses", "f(a, (b)) c (d~~e) g", " ^^^^^^^    ^^^     "),  # a blank line closes every bracket
    ("nested_parentheses", "f(a, (b)) c", "     ^^    "),
    ("square_brackets", "a[1][2]", " ^^ ^^ "),
    ("curly_braces", "{a: {b}}", "^^^^^^^ "),
    ("indent_4", "a~    b c~  d~        e~    ~", "      ^^^             ^      "),
    ("indent_8", "    a~        bc~", "              ^^ "),
    ("column_40", "x" * 42 + "~ab", " " * 40 + "^^^  "),
    ("digits", "a1 22 b3c", " ^ ^^  ^ "),
    ("capitalised_word", "The cat Saw NASA and Ok_ a Bb.", "^^^     ^^^                ^^ "),
    ("sentence_end", "It ends. Not e.g x. done!~Next", "        ^          ^     ^    "),
    ("word_start", "an apple's 2b x_y", "^  ^          ^  "),
    ("url", "see http://a.org/x?y=1 and www.b.c!", "    ^^^^^^^^^^^^^^^^^^     ^^^^^^^^"),
    ("wikilink", "a [[B|c]] [[d~]]", "  ^^^^^^        "),
    ("xml_tag", "<a href='x'>t</a> 1 < 2", "^^^^^^^^^^^  ^^^       "),
])
def test_predicates_against_hand_made_masks(name, text, expected):
    text = text.replace("~", "\n")
    assert len(expected) == len(text), (len(expected), len(text))
    assert _marks(text, P.PREDICATES[name].mask(text)) == expected


def test_every_library_predicate_has_one_sentence_and_a_checked_mask():
    assert len(P.LIBRARY) >= 14 and len(set(P.PREDICATES)) == len(P.LIBRARY)
    for p in P.LIBRARY:
        assert p.doc.endswith(".") and p.doc.count(". ") == 0, p.name  # one sentence
        mask = p.mask(TEXT)
        assert mask.dtype == bool and mask.shape == (len(TEXT),)
        if p.hard is not None:
            assert p.hard(TEXT).shape == (len(TEXT),) and p.hard_doc
    with pytest.raises(ConfigError, match="exactly one of pattern= and function="):
        P.Predicate("x", "x.")
    with pytest.raises(ConfigError, match="invalid regular expression"):
        P.Predicate("x", "x.", pattern="([")
    with pytest.raises(ConfigError, match="returned shape"):
        P.Predicate("x", "x.", function=lambda t: np.zeros(3, bool)).mask("abcd")
    with pytest.raises(ConfigError, match="unknown predicate 'comments'; choose from url, "):
        P.select("comment,comments")


def _naive_controls(text: str) -> dict[str, list[int]]:
    """The controls by the most literal loop over the characters."""
    out = {k: [] for k in ("column", "indent", "paren_depth", "dquote_parity", "squote_parity")}
    col, lead, in_lead, depth, dq, sq, prev = 0, 0, True, 0, 0, 0, ""
    for ch in text:
        if ch == "\n" and prev == "\n":
            depth = 0
        if ch == "(":
            depth += 1
        if ch == ")":
            depth = max(depth - 1, 0)
        out["paren_depth"].append(depth)  # after reading the character
        out["column"].append(col)
        if in_lead and ch in " \t":
            lead += 1
        elif ch != "\n":
            in_lead = False
        out["indent"].append(lead)
        dq ^= ch == '"'
        sq ^= ch == "'"
        out["dquote_parity"].append(dq if ch != "\n" else 0)
        out["squote_parity"].append(sq if ch != "\n" else 0)
        if ch == "\n":
            col, lead, in_lead, dq, sq = 0, 0, True, 0, 0
        else:
            col += 1
        prev = ch
    return out


def test_controls_equal_a_naive_loop():
    text = TEXT + "\n\n  ((x\n\n)) \"a\" 'b\n"
    got = P.controls(text)
    for name, values in _naive_controls(text).items():
        assert got[name].tolist() == values, name
    assert got["run_length"].tolist() == run_length(text).tolist()
    assert set(got) | {"token"} == set(P.CONTROL_DOCS)


# -- the atlas against probe.rank_units ---------------------------------------------------------


def test_sorted_block_ranks_equal_average_ranks_on_every_subset():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, size=(5, 300)).astype(np.float32)  # many ties
    x[2] = rng.normal(size=300)
    block = _SortedBlock(x)
    for sel in (np.ones(300, bool), rng.random(300) < 0.3, np.arange(300) % 2 == 0):
        ranks = block.ranks(sel)
        for row in range(5):
            np.testing.assert_array_equal(ranks[row, sel], average_ranks(x[row, sel]))


@pytest.fixture(scope="module")
def small_atlas(tok):
    model = _model("lstm", tok.vocab_size, hidden=10)
    return model, build(model, tok, TEXT, seed=5, split_at=len(CODE) * 2)


def test_atlas_aurocs_equal_rank_units(tok, small_atlas):
    model, atlas = small_atlas
    tr, split_at = atlas.trace, len(CODE) * 2
    untrained = trace(untrained_copy(model, 5), tok, TEXT)
    scored = [r for r in atlas.rows if r.best is not None]
    assert len(scored) >= 10 and any(r.hard is not None for r in scored)
    for row in scored:
        mask = row.predicate.mask(TEXT)
        expected = rank_units(tr, mask, split_at=split_at)[0]
        assert (row.best.unit, row.best.sign, row.best.auroc_a, row.best.auroc_b) == \
               (expected.unit, expected.sign, expected.auroc_a, expected.auroc_b), row.predicate.name
        expected = rank_units(untrained, mask, split_at=split_at)[0]
        assert (row.untrained.unit, row.untrained.auroc_a, row.untrained.auroc_b) == \
               (expected.unit, expected.auroc_a, expected.auroc_b), row.predicate.name
        if row.hard is not None:
            expected = rank_units(tr, mask, where=row.predicate.hard(TEXT), split_at=split_at)[0]
            assert (row.hard.unit, row.hard.auroc_a, row.hard.auroc_b) == \
                   (expected.unit, expected.auroc_a, expected.auroc_b), row.predicate.name
        # the best control: every allowed feature by probe.score_feature, the best AUROC_B
        feats = {k: v[tr.spans[:, 1] - 1] for k, v in P.controls(TEXT).items() if k not in row.predicate.defines}
        best = max(score_feature(tr, v.astype(float), mask, split_at=split_at).auroc_b for v in feats.values())
        assert row.control.auroc_b >= best - 1e-12
        if row.control.name != "token":
            got = score_feature(tr, feats[row.control.name].astype(float), mask, split_at=split_at)
            assert (got.sign, got.auroc_a, got.auroc_b) == pytest.approx(
                (row.control.sign, row.control.auroc_a, row.control.auroc_b), abs=1e-12)
        assert row.gain == pytest.approx(row.best.auroc_b - max(row.control.auroc_b, row.untrained.auroc_b))
    gains = [r.gain for r in scored]
    assert gains == sorted(gains, reverse=True) and atlas.rows[: len(scored)] == scored


def test_atlas_probe_column_equals_logistic_probe(tok):
    """build(probe=True): every scored row's probe is logistic_probe's over h and c on the
    same data (the same fit, bit for bit), and the table and page show it."""
    model = _model("lstm", tok.vocab_size, hidden=8, layers=1)
    names = ("comment", "parentheses", "wikilink")
    atlas = build(model, tok, TEXT, predicates=",".join(names), split_at=len(CODE) * 2, untrained=False,
                  probe=True, probe_steps=30)
    rows = {r.predicate.name: r for r in atlas.rows}
    assert rows["wikilink"].probe is None  # skipped rows have no probe
    for name in ("comment", "parentheses"):
        got = rows[name].probe
        want = logistic_probe(atlas.trace, P.PREDICATES[name].mask(TEXT), kinds=("h", "c"), steps=30,
                              split_at=len(CODE) * 2)
        assert got.units == want.units and np.array_equal(got.weights, want.weights)
        assert (got.auroc_a, got.auroc_b) == (want.auroc_a, want.auroc_b)
        assert f"{got.auroc_b:9.3f}" in atlas.table()
    assert "probe B" in atlas.table() and "probe B" in atlas.table_html() and "sparse logistic probe" in atlas.to_html()
    plain = build(model, tok, TEXT, predicates="comment", split_at=len(CODE) * 2, untrained=False)
    assert "probe" not in plain.table() and "probe B" not in plain.to_html()


def test_atlas_skips_what_it_cannot_score(tok, small_atlas):
    _, atlas = small_atlas
    skipped = {r.predicate.name: r.skipped for r in atlas.rows if r.best is None}
    assert "wikilink" in skipped and "has 0 of" in skipped["wikilink"]
    assert "skipped" in atlas.table()
    with pytest.raises(ConfigError, match="split_at must be inside the text"):
        build(_model("lstm", tok.vocab_size), tok, TEXT, split_at=len(TEXT) + 5, untrained=False)
    comment = P.PREDICATES["comment"]
    with pytest.raises(ConfigError, match="two predicates share a name: comment"):
        build(_model("lstm", tok.vocab_size), tok, TEXT, predicates=[comment, comment], untrained=False)


def test_atlas_page_escapes_hostile_text(tok, tmp_path):
    hostile = CODE + '# <script>alert("x")</script> & <img src=x onerror=1>\n'
    text = hostile * 4
    model = _model("gru", tok.vocab_size, hidden=8, layers=1)
    evil = P.Predicate('<b onmouseover="x">', "an 'evil' <i>doc</i> & more.", pattern=r"<[a-z]+")
    atlas = build(model, tok, text, predicates=[evil, P.PREDICATES["comment"]], untrained=False, snippets=3)
    page = atlas.save(tmp_path / "a.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script>" not in page and "<img" not in page and "<b onmouseover" not in page and "<i>doc" not in page
    assert ">&lt;</span>" in page and html.escape(evil.doc) in page  # the text: one escaped character a span
    assert page.count("<svg") == 2 and page.count('class="lmgen-viz"') >= 2  # histograms and snippets
    assert not re.search(r"(src|href)=['\"]https?:", page)  # standalone: nothing loaded from elsewhere
    assert "Atlas" in repr(atlas) and atlas.to_html() == page
    table = atlas._repr_html_()  # a notebook shows the table only
    assert table == atlas.table_html() and "<table class='atlas'>" in table and "<body" not in table
    assert "&lt;b onmouseover=" in table and "<b onmouseover" not in table


# -- lmgen atlas ----------------------------------------------------------------------------------


def test_split_point():
    text = "ab\ncd\nef\n"
    assert split_point(None, text) is None
    assert split_point("0.5", text) == 6  # moved on to the next line start
    assert split_point("4", text) == 4
    for bad, message in (("x", "fraction in"), ("2.5", "fraction in"), ("0", "fraction in"), ("99", "past the end")):
        with pytest.raises(ConfigError, match=message):
            split_point(bad, text)


def test_cli_atlas(tiny_checkpoint, tmp_path, capsys):
    text_file = tmp_path / "code.py"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "atlas.html"
    base = ["atlas", str(tiny_checkpoint), "--text", str(text_file), "--allow-unknown", "--out", str(out),
            "--threads", "1"]
    assert main(base + ["--predicates", "comment,parentheses", "--split-at", "0.5", "--probe"]) == 0
    captured = capsys.readouterr()
    assert "comment" in captured.out and "parentheses" in captured.out and "gain" in captured.out
    assert "probe B" in captured.out and "probes in" in captured.err
    assert "wrote" in captured.err and out.read_text(encoding="utf-8").count("<section") == 2
    for args, message in (
        ([], "give a checkpoint and --text FILE"),
        (base + ["--predicates", "nope"], "unknown predicate 'nope'"),
        (base + ["--split-at", "1e9"], "past the end of the text"),
        (base + ["--split-at", "-1"], "--split-at must be a fraction"),
        (base + ["--max-chars", "-1"], "--max-chars must be >= 0"),
        (base + ["--snippets", "-1"], "--snippets must be >= 0"),
        (base + ["--kinds", "h,q"], "no activation kind 'q'"),
        (["atlas", str(tiny_checkpoint), "--text", str(tmp_path / "missing.txt")], "cannot read it"),
        (base + ["--out", str(tmp_path)], "is a folder"),
        (base[:2] + ["--text", str(text_file), "--out", str(out)], "lacks"),
    ):
        assert main(["atlas"] + args[1:] if args else ["atlas"]) == 1, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert main(["atlas", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(p.name in listed for p in P.LIBRARY)
