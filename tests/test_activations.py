"""trace() against the model's own forward pass and a naive step-by-step reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmgen.activations import KINDS, regex_mask, token_spans, trace
from lmgen.cells import _linear_scan
from lmgen.config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.model import RNNLM
from lmgen.tokenizer import build_tokenizer

TEXT = 'See http://example.org/a?b=1 and [[Link|text]] "quoted".\n  indented line\n' * 3


def _model(cell: str, vocab: int, layers: int = 2, hidden: int = 12, seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=vocab, embed=7, hidden=hidden, layers=layers))
    # Larger recurrent weights than the init, so gates leave their linear range.
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3.0)
    return model


def _naive(model: RNNLM, ids: list[int]) -> list[dict[str, np.ndarray]]:
    """Every layer's activations by the textbook equations, one step at a time, float64."""
    cell, L, H = model.config.cell, model.config.layers, model.config.hidden
    x_seq = model.embedding.weight.detach().double()[torch.tensor(ids)]  # [T, E]
    out = []
    for layer in range(L):
        W = {n: getattr(model.rnn, f"{n}_l{layer}").detach().double()
             for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        h, c = torch.zeros(H, dtype=torch.float64), torch.zeros(H, dtype=torch.float64)
        rows = {k: [] for k in KINDS[cell]}
        for x in x_seq:
            gi = W["weight_ih"] @ x + W["bias_ih"]
            gh = W["weight_hh"] @ h + W["bias_hh"]
            if cell == "lstm":
                i, f, g, o = (gi + gh).split(H)
                i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                c = f * c + i * g
                h = o * c.tanh()
                values = dict(h=h, c=c, i=i, f=f, g=g, o=o)
            elif cell == "gru":
                r = (gi[:H] + gh[:H]).sigmoid()
                z = (gi[H : 2 * H] + gh[H : 2 * H]).sigmoid()
                n = (gi[2 * H :] + r * gh[2 * H :]).tanh()
                h = (1 - z) * n + z * h
                values = dict(h=h, r=r, z=z, n=n)
            else:
                h = (gi + gh).tanh()
                values = dict(h=h)
            for k, v in values.items():
                rows[k].append(v.numpy().copy())
        out.append({k: np.stack(v) for k, v in rows.items()})
        x_seq = torch.from_numpy(out[-1]["h"])
    return out


@pytest.fixture(scope="module")
def char_tok():
    return build_tokenizer("char", [TEXT])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_trace_equals_model_forward_and_naive_reference(cell, char_tok):
    model = _model(cell, char_tok.vocab_size)
    tr = trace(model, char_tok, TEXT, top_k=3)
    ids = [char_tok.end_id] + char_tok.encode(TEXT)
    T = len(ids) - 1
    assert tr.ids.tolist() == ids[1:]
    # 1. the model's own fused forward: final state of every layer and the logits
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]))
    h_n = state[0] if cell == "lstm" else state
    for layer in range(2):
        acts = tr.layers[layer]
        assert set(acts) == set(KINDS[cell])
        assert all(a.shape == (T, 12) for a in acts.values())
        np.testing.assert_allclose(acts["h"][-1], h_n[layer, 0].numpy(), atol=1e-5)
        if cell == "lstm":
            np.testing.assert_allclose(acts["c"][-1], state[1][layer, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(acts["o"] * np.tanh(acts["c"]), acts["h"], atol=1e-5)
    probs = torch.softmax(logits[0, 1:], dim=-1).numpy()  # [T, V], drop the [END] step
    top = np.sort(probs, axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(tr.top_probs, top, atol=1e-5)
    np.testing.assert_array_equal(tr.top_ids[:, 0], probs.argmax(axis=1))
    following = np.array(ids[2:])
    np.testing.assert_allclose(tr.next_prob[:-1], probs[np.arange(T - 1), following], atol=1e-5)
    assert np.isnan(tr.next_prob[-1])
    # 2. the textbook equations, step by step in float64, every kind at every step
    naive = _naive(model, ids)
    for layer in range(2):
        for kind in KINDS[cell]:
            np.testing.assert_allclose(tr.layers[layer][kind], naive[layer][kind][1:], atol=1e-5, rtol=1e-5,
                                       err_msg=f"layer {layer} kind {kind}")


def test_kinds_subset_and_no_end_prefix(char_tok):
    model = _model("lstm", char_tok.vocab_size, layers=1)
    tr = trace(model, char_tok, TEXT, kinds=["c"], start_with_end=False)
    assert set(tr.layers[0]) == {"h", "c"}  # h is always kept (it feeds the next layer)
    naive = _naive(model, char_tok.encode(TEXT))
    np.testing.assert_allclose(tr.layers[0]["c"], naive[0]["c"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [1, 2, 7, 50, 101])
def test_linear_scan_equals_loop(T):
    gen = torch.Generator().manual_seed(T)
    a, b, x0 = torch.rand(T, 5, generator=gen), torch.randn(T, 5, generator=gen), torch.randn(5, generator=gen)
    x, expected = x0.double(), []
    for t in range(T):
        x = a[t].double() * x + b[t].double()
        expected.append(x)
    np.testing.assert_allclose(_linear_scan(a, b, x0).numpy(), torch.stack(expected).numpy(), atol=1e-5)


def test_spans_char_word_spm(char_tok):
    text = "a  bc\n\nd é 漢字\n"
    ids = char_tok.encode_array(text[:3])
    assert token_spans(char_tok, text[:3], ids).tolist() == [[0, 1], [1, 2], [2, 3]]
    word = build_tokenizer("word", [text])
    spans = token_spans(word, text, word.encode_array(text))
    assert [text[s:e] for s, e in spans] == ["a", "bc", "\n", "\n", "d", "é", "漢字", "\n"]
    corpus = "the cat sat on the mat\nthe dog\n" * 50 + "indented\n    code = 1\n" * 20
    spm = build_tokenizer("spm", [corpus], vocab_size=279)
    sample = "the cat ate 漢 code\n    x\n"
    ids = spm.encode_array(sample)
    spans = token_spans(spm, sample, ids)
    # contiguous, in order, covering the text exactly
    assert spans[0, 0] == 0 and spans[-1, 1] == len(sample)
    assert (spans[1:, 0] == spans[:-1, 1]).all()
    for (s, e), i in zip(spans.tolist(), ids.tolist()):
        if i == spm.newline_id:
            assert sample[s:e] == "\n"


def test_word_model_masks_map_to_tokens():
    text = "visit http://a.org/x now or www.b.com then stop\n" * 4
    tok = build_tokenizer("word", [text])
    tr = trace(_model("lstm", tok.vocab_size, layers=1), tok, text)
    mask = tr.token_mask(regex_mask(text, r"https?://\S+|www\.\S+"))
    words = [text[s:e] for s, e in tr.spans]
    assert [w for w, m in zip(words, mask) if m] == ["http://a.org/x", "www.b.com"] * 4
    values = tr.char_values(np.arange(len(tr), dtype=float))
    assert values[0] == 0 and np.isnan(values[5]) and values[6] == 1  # "visit" | " " | "http..."


def test_token_mask_majority_and_char_values(char_tok):
    model = _model("gru", char_tok.vocab_size, layers=1)
    tr = trace(model, char_tok, "abd")
    assert tr.token_mask(np.array([True, False, True])).tolist() == [True, False, True]
    np.testing.assert_array_equal(tr.char_values(tr.unit(0, "h", 2)), tr.layers[0]["h"][:, 2])


def test_user_errors_are_clear(char_tok):
    model = _model("lstm", char_tok.vocab_size, layers=2)
    with pytest.raises(ConfigError, match="empty"):
        trace(model, char_tok, "")
    with pytest.raises(ConfigError, match=r"lacks: '☃', '\\x07'"):
        trace(model, char_tok, "See ☃ no\x07")
    tr = trace(model, char_tok, "See ☃", allow_unknown=True)
    assert tr.ids[-1] == char_tok.unk_id
    with pytest.raises(ConfigError, match="matches nothing"):
        regex_mask(TEXT, r"ftp://")
    with pytest.raises(ConfigError, match="invalid regular expression"):
        regex_mask(TEXT, r"([")
    tr = trace(model, char_tok, TEXT[:20])
    with pytest.raises(ConfigError, match=r"layer 2 is out of range: this model has layers 0..1"):
        tr.unit(2, "h", 0)
    with pytest.raises(ConfigError, match=r"unit 12 is out of range: layer \d has units 0..11"):
        tr.unit(0, "h", 12)
    with pytest.raises(ConfigError, match="no activation kind 'z'"):
        tr.unit(0, "z", 0)
    with pytest.raises(ConfigError, match="no activation kind 'c' for a gru"):
        trace(_model("gru", char_tok.vocab_size), char_tok, "See", kinds=["c"])
    with pytest.raises(ConfigError, match="mask has shape"):
        tr.token_mask(np.zeros(3, bool))
