"""AWD-LSTM's dropouts: exact oracles for each mask, the functional path, gradients, and the tools after training.

Masks come from the global RNG, so each test seeds it; oracles rebuild the expected tensor
with the same float operations (x * (1/(1-p))), so equality is exact, not approximate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmgen import cells, regularize, viz
from lmgen.activations import trace
from lmgen.config import ModelConfig
from lmgen.model import RNNLM, build_model
from lmgen.sampling import GenerationConfig, generate, half_supported
from lmgen.tokenizer import build_tokenizer

CELLS = ["lstm", "gru", "rnn"]
ALL_ON = dict(dropout_input=0.3, dropout_hidden=0.25, dropout_output=0.4, dropout_embed=0.1, weight_drop=0.5)


def _model(cell: str = "lstm", seed: int = 0, vocab: int = 30, layers: int = 2, **kwargs) -> RNNLM:
    torch.manual_seed(seed)
    return RNNLM(ModelConfig(cell=cell, vocab_size=vocab, embed=8, hidden=8, layers=layers, **kwargs))


def _kept(zero_pattern_of: torch.Tensor, p: float) -> torch.Tensor:
    """The mask a dropout with p drew, read off its output's zeros: 0 or 1/(1-p)."""
    return (zero_pattern_of != 0).float().div_(1.0 - p)


class _KernelSpy:
    """Stands in for ATen's whole-sequence kernels and records each call's input and weights."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        for cell, kernel in dict(cells._ATEN_SEQUENCES).items():
            monkeypatch.setitem(cells._ATEN_SEQUENCES, cell, self._wrap(kernel))

    def _wrap(self, kernel):
        def spy(x, state, flat, *args):
            self.calls.append((x, list(flat)))
            return kernel(x, state, flat, *args)
        return spy


# -- locked dropout ----------------------------------------------------------------------


def test_locked_dropout_has_one_mask_per_sequence_and_is_the_identity_in_eval():
    torch.manual_seed(0)
    x = torch.randn(4, 50, 16)  # [B, T, H]
    y = regularize.locked_dropout(x, 0.3, training=True)
    mask = _kept(y[:, :1] / x[:, :1], 0.3)  # [B, 1, H]
    assert torch.equal(y, x * mask)  # every step multiplied by its sequence's mask
    assert not torch.equal(mask[0], mask[1])  # each sequence has its own
    assert 0.1 < (mask == 0).float().mean() < 0.5
    assert regularize.locked_dropout(x, 0.3, training=False) is x
    assert regularize.locked_dropout(x, 0.0, training=True) is x


def test_the_models_three_locked_places_hold_their_mask_over_time(monkeypatch):
    model = _model(layers=2, dropout_input=0.3, dropout_hidden=0.25, dropout_output=0.4).train()
    spy = _KernelSpy(monkeypatch)
    tokens = torch.randint(0, 30, (3, 20))
    _, _, (raw, dropped) = model(tokens, return_outputs=True)
    (x0, _), (x1, _) = spy.calls  # layer by layer: the input of layer 0, then of layer 1
    embedded = model.embedding(tokens)
    assert torch.equal(x0, embedded * _kept(x0[:, :1] / embedded[:, :1], 0.3))
    out0, _ = cells.single_layer(model.rnn, 0)(x0)  # layer 0's output, undropped
    assert torch.equal(x1, out0 * _kept(x1[:, :1] / out0[:, :1], 0.25))
    assert torch.equal(dropped, raw * _kept(dropped[:, :1] / raw[:, :1], 0.4))
    # evaluation: no mask anywhere, and the fused module itself runs
    model.eval()
    _, _, (raw, dropped) = model(tokens, return_outputs=True)
    assert dropped is raw and len(spy.calls) == 2


# -- embedding dropout -------------------------------------------------------------------


def test_embedding_dropout_drops_whole_token_rows_and_rescales_the_rest():
    torch.manual_seed(0)
    weight = torch.randn(200, 6)  # [V, E]
    tokens = torch.randint(0, 200, (8, 40))
    got = regularize.embedding_dropout(weight, tokens, 0.25, training=True)  # [B, T, E]
    dropped = (got == 0).all(-1)  # [B, T]
    assert ((got == 0).any(-1) == dropped).all()  # a row is dropped whole or not at all
    for token in tokens.unique():  # one decision per token type, wherever it occurs in the batch
        where = tokens == token
        assert dropped[where].all() or not dropped[where].any()
    kept = ~dropped
    assert torch.equal(got[kept], weight[tokens[kept]] * (1.0 / 0.75))
    assert 0.1 < dropped.float().mean() < 0.4
    # awd-lstm-lm's formulation, the whole matrix masked and then looked up, gives the same
    mask = (got != 0).any(-1).float().div_(0.75)  # [B, T]
    full = torch.zeros(200, 1).index_put_((tokens.flatten(),), mask.flatten()[:, None])
    assert torch.equal(got, F.embedding(tokens, weight * full))
    assert torch.equal(regularize.embedding_dropout(weight, tokens, 0.25, training=False), weight[tokens])


# -- weight drop -------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_changes_only_w_hh_with_a_new_mask_per_call(cell, monkeypatch):
    model = _model(cell, weight_drop=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spy = _KernelSpy(monkeypatch)
    tokens = torch.randint(0, 30, (3, 10))
    model(tokens)[0].sum().backward()
    model(tokens)
    assert len(spy.calls) == 2  # one fused call for both layers (no locked dropout between them)
    patterns = []
    for _, flat in spy.calls:
        assert len(flat) == 4 * 2
        for layer in range(2):
            w_ih, w_hh, b_ih, b_hh = flat[4 * layer : 4 * layer + 4]
            raw = cells.layer_weights(model.rnn, layer)
            assert w_ih is raw[0] and b_ih is raw[2] and b_hh is raw[3]  # the parameters themselves
            assert torch.equal(w_hh, raw[1] * _kept(w_hh, 0.5))  # W_hh * m / (1-p)
            assert 0.35 < (w_hh == 0).float().mean() < 0.65
            patterns.append(w_hh == 0)
    assert not torch.equal(patterns[0], patterns[2])  # layer 0, call 1 vs call 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # the parameters are untouched


@pytest.mark.parametrize("cell", CELLS)
def test_in_eval_a_regularised_model_equals_the_plain_one_bit_for_bit(cell):
    plain = _model(cell).eval()
    regularised = _model(cell, **ALL_ON).eval()
    regularised.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 30, (3, 12))
    with torch.no_grad():
        a, state_a = plain(tokens)
        b, state_b = regularised(tokens)
    assert torch.equal(a, b)
    for sa, sb in zip(state_a if cell == "lstm" else [state_a], state_b if cell == "lstm" else [state_b]):
        assert torch.equal(sa, sb)


def test_weight_drop_gradients_reach_w_hh_through_the_mask():
    """gradcheck in float64 (the same mask every call, by seed), and the model's gradient by hand."""
    torch.manual_seed(0)
    rnn = cells.build("lstm", 3, 4, 1).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    w_ih, w_hh, b_ih, b_hh = (w.detach() for w in cells.layer_weights(rnn, 0))

    def run(w: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)
        dropped = regularize.weight_drop(w, 0.5, training=True)
        return cells.run_stack("lstm", x, None, [(w_ih, dropped, b_ih, b_hh)], train=True)[0]

    assert torch.autograd.gradcheck(run, (w_hh.clone().requires_grad_(),))

    model = _model("gru", weight_drop=0.5, layers=1).train()
    tokens = torch.randint(0, 30, (3, 10))
    torch.manual_seed(2)
    model(tokens)[0].square().sum().backward()
    torch.manual_seed(2)
    mask = regularize.weight_drop(torch.ones_like(model.rnn.weight_hh_l0), 0.5, training=True)  # the same draw
    dropped = (model.rnn.weight_hh_l0.detach() * mask).requires_grad_()
    w_ih, _, b_ih, b_hh = cells.layer_weights(model.rnn, 0)
    out, _ = cells.run_stack("gru", model.embedding(tokens), None, [(w_ih, dropped, b_ih, b_hh)], train=True)
    model.decoder(out).square().sum().backward()
    torch.testing.assert_close(model.rnn.weight_hh_l0.grad, dropped.grad * mask, rtol=1e-6, atol=1e-6)


# -- the functional path -----------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_the_layer_by_layer_path_with_all_p_zero_equals_the_fused_path(cell):
    fused = _model(cell, layers=3).train()
    functional = _model(cell, layers=3, dropout_input=0.0, dropout_hidden=0.0, dropout_output=0.0).train()
    assert functional.functional and not fused.functional
    tokens = torch.randint(0, 30, (4, 16))
    state = fused.init_state(4)
    state = tuple(torch.randn_like(s) for s in state) if cell == "lstm" else torch.randn_like(state)
    a, state_a = fused(tokens, state)
    b, state_b = functional(tokens, state)
    assert torch.equal(a, b)
    for sa, sb in zip(state_a if cell == "lstm" else [state_a], state_b if cell == "lstm" else [state_b]):
        assert torch.equal(sa, sb)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, pa), pb in zip(fused.named_parameters(), functional.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_masks_are_reproducible_by_seed():
    model = _model(**ALL_ON).train()
    tokens = torch.randint(0, 30, (3, 10))
    torch.manual_seed(5)
    a, _ = model(tokens)
    torch.manual_seed(5)
    b, _ = model(tokens)
    c, _ = model(tokens)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_return_outputs_gives_the_decoders_input_before_and_after_its_dropout():
    model = _model(dropout=0.0).train()
    logits, _, (raw, dropped) = model(torch.randint(0, 30, (2, 7)), return_outputs=True)
    assert raw.shape == dropped.shape == (2, 7, 8)
    assert torch.equal(logits, model.decoder(dropped))
    window = build_model(ModelConfig(cell="window", vocab_size=30, embed=4, hidden=6, dropout=0.5)).train()
    logits, _, (raw, dropped) = window(torch.randint(0, 30, (2, 7)), return_outputs=True)
    assert raw.shape == dropped.shape == (2, 7, 6) and torch.equal(logits, window.decoder(dropped))
    assert torch.equal(dropped, raw * _kept(dropped, 0.5)) and (dropped == 0).any()


# -- the tools on a model trained with every option --------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_a_model_trained_with_every_option_samples_traces_and_shows(cell):
    text = "the cat sat on the mat. the dog sat on the log.\n" * 4
    tok = build_tokenizer("char", [text])
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=tok.vocab_size, embed=12, hidden=12, layers=2, **ALL_ON))
    ids = torch.tensor([[tok.end_id] + tok.encode(text)])  # [1, T+1]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        logits, _ = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[0, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    greedy = GenerationConfig(do_sample=False, max_new_tokens=10)
    [sample] = generate(model, tok, "the c", greedy)
    # the step engine sees the full weights: greedy equals the model's own forward, token by token
    expected, state = [], None
    with torch.no_grad():
        logits, state = model(torch.tensor([[tok.end_id] + tok.encode("the c")]))
        for _ in range(10):
            t = int(logits[0, -1].argmax())
            if t == tok.end_id:
                break
            expected.append(t)
            logits, state = model(torch.tensor([[t]]), state)
    assert sample.ids == expected
    if half_supported():
        [half] = generate(model, tok, "the c", GenerationConfig(do_sample=False, max_new_tokens=10,
                                                                 precision="float16"))
        assert len(half.ids) > 0
    tr = trace(model, tok, "the cat sat", top_k=3)
    assert len(tr) == len("the cat sat") and len(tr.layers) == 2
    assert "<span" in viz.show(tr, 1, "h", 0, top_k=3).to_html()
