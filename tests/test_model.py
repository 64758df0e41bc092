"""The model alone: tiny configs, exact oracles."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmgen.config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.model import RNNLM, build_model, detach_state, select_state

CELLS = ["lstm", "gru", "rnn"]


def tiny(cell="lstm", **kw):
    torch.manual_seed(0)
    cfg = dict(cell=cell, vocab_size=11, embed=6, hidden=8, layers=2)
    cfg.update(kw)
    return RNNLM(ModelConfig(**cfg))


@pytest.mark.parametrize("cell", CELLS)
def test_initial_loss_is_about_ln_v(cell):
    torch.manual_seed(1)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=200, embed=32, hidden=64, layers=2))
    x = torch.randint(0, 200, (8, 32))
    logits, _ = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 200, (8 * 32,)))
    assert abs(loss.item() - math.log(200)) < 0.05


@pytest.mark.parametrize("cell", CELLS)
def test_overfits_one_batch(cell):
    model = tiny(cell, hidden=32, embed=16, layers=1)
    x = torch.randint(0, 11, (4, 12), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(250):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64(cell):
    model = tiny(cell, vocab_size=5, embed=3, hidden=4).double()
    x = torch.randint(0, 5, (2, 3))
    h0 = model.init_state(2)
    h0 = tuple(s.double().requires_grad_() for s in h0) if isinstance(h0, tuple) else h0.double().requires_grad_()
    inputs = h0 if isinstance(h0, tuple) else (h0,)

    def f(*state):
        logits, _ = model(x, state if len(state) == 2 else state[0])
        return logits

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)
    # And with respect to the weights: one decoder and one recurrent matrix.
    for name in ("decoder.weight", "rnn.weight_hh_l0"):
        w = dict(model.named_parameters())[name].detach().clone().requires_grad_()
        fn = lambda w, name=name: torch.func.functional_call(model, {name: w}, (x,))[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_windows_equal_one_long_window(cell):
    model = tiny(cell).eval()
    x = torch.randint(0, 11, (3, 20))
    whole, state_whole = model(x)
    parts, state = [], None
    for chunk in x.split([7, 1, 5, 7], dim=1):
        logits, state = model(chunk, state)
        state = detach_state(state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    state_whole if isinstance(state_whole, tuple) else (state_whole,)):
        torch.testing.assert_close(a, b)


def test_tied_weights_share_storage_and_need_equal_sizes():
    model = tiny(embed=8, hidden=8, tie=True)
    assert model.decoder.weight.data_ptr() == model.embedding.weight.data_ptr()
    with pytest.raises(ConfigError, match="--tie needs --embed equal to --hidden"):
        ModelConfig(vocab_size=5, embed=4, hidden=8, tie=True)


@pytest.mark.parametrize("bad, message", [
    (dict(dropout=1.0), "--dropout must be in"),
    (dict(hidden=0), "--hidden must be a whole number >= 1"),
    (dict(layers=-2), "--layers must be"),
    (dict(cell="transformer"), "--cell must be one of lstm, gru, rnn"),
])
def test_config_names_the_bad_flag(bad, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(vocab_size=5, **bad)


def test_select_state_picks_batch_rows():
    model = tiny("lstm")
    _, state = model(torch.randint(0, 11, (4, 3)))
    picked = select_state(state, torch.tensor([2, 0]))
    torch.testing.assert_close(picked[0][:, 0], state[0][:, 2])
    torch.testing.assert_close(picked[1][:, 1], state[1][:, 0])


@pytest.mark.parametrize("cell", CELLS + ["window"])
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_estimate_equals_the_built_model(cell, tie):
    from lmgen.model import estimate_parameters

    cfg = ModelConfig(cell=cell, vocab_size=37, embed=16 if tie else 12, hidden=16, layers=3, tie=tie)
    assert estimate_parameters(cfg) == build_model(cfg).num_parameters()


@pytest.mark.parametrize("cell", ["lstm", "window"])
def test_init_range_draws_every_weight_uniformly(cell):
    config = ModelConfig(cell=cell, vocab_size=50, embed=32, hidden=32, layers=2, init_range=0.1)
    model = build_model(config)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert flat.abs().max() <= 0.1
    # U(-0.1, 0.1) has standard deviation 0.1 / sqrt(3); the default init is far wider.
    assert flat.std().item() == pytest.approx(0.1 / 3 ** 0.5, rel=0.05)
    assert flat.abs().max() > 0.099  # biases too, not left at zero or one
