"""Per-layer hidden sizes (``--hidden 1150,1150,400``) and the adaptive softmax (``--adaptive-softmax``).

Oracles: a naive per-step loop of every cell, a hand-computed two-level softmax, the
model's own full log-probabilities, and parameter counts of the built modules.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lmgen import cells
from lmgen.activations import trace
from lmgen.checkpoint import load_checkpoint
from lmgen.config import ModelConfig
from lmgen.errors import CheckpointError, ConfigError
from lmgen.gradients import gradient_norms
from lmgen.model import RNNLM, build_model, estimate_parameters
from lmgen.sampling import GenerationConfig, generate
from lmgen.sampling.recurrence import Recurrence, half_supported
from lmgen.softmax import AdaptiveDecoder, decoder_parameters, token_counts
from lmgen.tokenizer import build_tokenizer

CELLS = ["lstm", "gru", "rnn"]


def naive_stack(cell, x, weights, sizes):
    """Every layer stepped by hand (cells.update on explicit products) from zero states: x [B, T, E] -> out, states."""
    B, T, _ = x.shape
    states = [cells.zero_state(cell, B, H, x) for H in sizes]
    outs = []
    for t in range(T):
        inp = x[:, t]
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            h = cells.output(cell, states[layer])
            a = inp @ w_ih.T + b_ih
            b = h @ w_hh.T + b_hh
            if cell == "gru":
                states[layer] = cells.update(cell, a, b, states[layer])
            else:
                states[layer] = cells.update(cell, a + b, None, states[layer])
            inp = cells.output(cell, states[layer])
        outs.append(inp)
    return torch.stack(outs, 1), states


# -- per-layer sizes ----------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_layers_of_different_sizes_equal_a_naive_loop_and_pad_their_state(cell):
    torch.manual_seed(0)
    sizes = [9, 5, 7]
    stack = cells.build(cell, 4, sizes, 3).double()
    assert isinstance(stack, cells.LayerStack)
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    out, state = stack(x)
    weights = [cells.layer_weights(stack, k) for k in range(3)]
    ref_out, ref_states = naive_stack(cell, x, weights, sizes)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (3, 2, 9)
    for layer, H in enumerate(sizes):
        torch.testing.assert_close(h[layer, :, :H], cells.output(cell, ref_states[layer]), rtol=0, atol=1e-12)
        assert not h[layer, :, H:].any(), "the padding past a layer's size stays zero"
    # carrying the state into a second window equals one run over both windows
    out2, _ = stack(x[:, 3:], stack(x[:, :3])[1])
    torch.testing.assert_close(out2, out[:, 3:], rtol=0, atol=1e-12)


def test_hidden_lists_set_the_layers_and_parse_from_the_command_line_and_toml():
    cfg = ModelConfig(hidden="1150,1150,400", embed=400, tie=True)
    assert (cfg.sizes, cfg.layers, cfg.top, cfg.width, cfg.hidden_text()) == \
        ([1150, 1150, 400], 3, 400, 1150, "1150,1150,400")
    assert ModelConfig(hidden=[64, 64]).hidden == 64 and ModelConfig(hidden=[64, 64]).layers == 2
    assert json.loads(json.dumps(cfg.hidden)) == [1150, 1150, 400]  # config.json keeps the list
    for bad, message in [(dict(hidden=[8, 0]), "whole numbers"), (dict(hidden="8,4", layers=3), "lists 2 sizes"),
                         (dict(hidden=[8, 4], tie=True, embed=8), "last layer"),
                         (dict(hidden=[8, 4], cell="window"), "recurrent cells"), (dict(hidden="8,x"), "--hidden")]:
        with pytest.raises(ConfigError, match=message):
            ModelConfig(**bad)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [dict(hidden=[12, 6], embed=6, tie=True),
                                   dict(hidden=[8, 16], adaptive_softmax="5,11"),
                                   dict(hidden=16, layers=2, adaptive_softmax="4")],
                         ids=["sizes-tied", "sizes-adaptive", "adaptive"])
def test_parameter_estimates_count_what_is_built(cell, shape):
    cfg = ModelConfig(cell=cell, vocab_size=23, **shape)
    assert estimate_parameters(cfg) == RNNLM(cfg).num_parameters()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("shape", [dict(hidden=[12, 6, 9]), dict(hidden=[10, 16], adaptive_softmax="5,11")],
                         ids=["sizes", "sizes-adaptive"])
def test_step_engines_follow_the_fused_forward(cell, precision, shape):
    if precision == "float16" and not half_supported():
        pytest.skip("no fbgemm float16 kernels in this torch build")
    torch.manual_seed(1)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=23, embed=5, **shape)).eval()
    tokens = torch.randint(0, 23, (3, 9))
    with torch.no_grad():
        logits, state = model(tokens)
    rec = Recurrence(model, precision)
    layers, steps = rec.split(model.init_state(3)), []
    for t in range(tokens.shape[1]):
        out, layers = rec.step(tokens[:, t], layers)
        steps.append(out)
    tol = 1e-5 if precision == "float32" else 2e-3
    torch.testing.assert_close(torch.stack(steps, 1).log_softmax(-1), logits.log_softmax(-1), rtol=0, atol=tol)
    joined = rec.join(layers)
    for a, b in zip(joined if cell == "lstm" else [joined], state if cell == "lstm" else [state]):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_trace_and_gradient_view_read_layers_of_different_sizes():
    text = "Trace me: a few words, (brackets) and \"quotes\" are enough for two layers."
    tok = build_tokenizer("char", [text])
    torch.manual_seed(2)
    model = RNNLM(ModelConfig(vocab_size=tok.vocab_size, embed=6, hidden=[10, 4])).eval()
    tr = trace(model, tok, text[:40])
    assert [layer["c"].shape[1] for layer in tr.layers] == [10, 4]
    # the last layer's h is what the decoder reads: trace's next-token guesses equal the model's
    with torch.no_grad():
        logits, _ = model(torch.as_tensor(np.concatenate([[tok.end_id], tr.ids]))[None])
    probs = logits[0, 1:].softmax(-1)
    torch.testing.assert_close(torch.as_tensor(tr.top_probs[:, 0]), probs.max(-1).values, rtol=0, atol=1e-5)
    tr.check_unit(1, "h", 3)
    with pytest.raises(ConfigError, match="layer 1 has units 0..3"):
        tr.check_unit(1, "h", 4)
    norms = gradient_norms(model, torch.as_tensor(tr.ids[:12])[None].long())
    assert norms.shape == (11,) and np.isfinite(norms).all()


# -- adaptive softmax -------------------------------------------------------------------


def naive_adaptive(dec: AdaptiveDecoder, h: torch.Tensor) -> torch.Tensor:
    """Two-level log-probabilities by hand from the clusters' weights, in token-id order: h [N, H] -> [N, V]."""
    asm = dec.clusters
    head = F.log_softmax(h @ asm.head.weight.T + asm.head.bias, -1)  # [N, shortlist + clusters]
    short = asm.shortlist_size
    by_rank = [head[:, :short]]
    for i, (proj, out) in enumerate(asm.tail):
        inner = F.log_softmax((h @ proj.weight.T) @ out.weight.T, -1)  # log p(token | cluster i)
        by_rank.append(head[:, short + i : short + i + 1] + inner)
    by_rank = torch.cat(by_rank, 1)  # column r: the token of frequency rank r
    full = torch.empty_like(by_rank)
    for token in range(dec.vocab_size):
        full[:, token] = by_rank[:, dec.rank[token]]
    return full


def test_adaptive_softmax_gives_exact_normalised_log_probs_in_token_order():
    torch.manual_seed(3)
    dec = AdaptiveDecoder(hidden=12, vocab_size=30, cutoffs=[4, 11, 20], div=2.0).double()
    counts = np.random.default_rng(0).integers(0, 1000, 30)
    dec.order_by(counts)
    head_tokens = set(np.argsort(-counts, kind="stable")[:4].tolist())
    assert {int(t) for t in torch.nonzero(dec.rank < 4)[:, 0]} == head_tokens
    h = torch.randn(7, 12, dtype=torch.float64)
    logp = dec(h)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp, naive_adaptive(dec, h), rtol=0, atol=1e-12)
    # training's cheap loss is the mean of exactly these log-probabilities at the targets
    targets = torch.randint(0, 30, (7,))
    torch.testing.assert_close(dec.loss(h, targets), -logp[torch.arange(7), targets].mean(), rtol=0, atol=1e-12)


def test_adaptive_softmax_model_trains_on_the_loss_that_evaluation_reports():
    torch.manual_seed(4)
    model = RNNLM(ModelConfig(vocab_size=25, embed=6, hidden=[10, 16], adaptive_softmax="5,12"))
    tokens = torch.randint(0, 25, (3, 11))
    model.eval()
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
        loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].reshape(-1)),
                               rtol=0, atol=1e-6)
    # the loss's gradient reaches every cluster's weights that a target uses, and the layers
    model.train()
    loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    assert model.rnn.weight_hh_l1.grad.abs().sum() > 0 and model.decoder.clusters.head.weight.grad.abs().sum() > 0


def test_token_counts_and_decoder_sizes():
    tokens = np.random.default_rng(1).integers(0, 50, 10_000).astype(np.uint16)
    assert token_counts(tokens, 50, chunk=777).tolist() == np.bincount(tokens, minlength=50).tolist()
    assert decoder_parameters(16, 40, [], 4.0) == 16 * 40 + 40
    dec = AdaptiveDecoder(16, 40, [10, 25], 4.0)
    assert decoder_parameters(16, 40, [10, 25], 4.0) == sum(p.numel() for p in dec.parameters())


def test_adaptive_softmax_checks_its_settings():
    for bad, message in [(dict(adaptive_softmax="20,10"), "increasing"), (dict(adaptive_softmax="x"), "cut-offs"),
                         (dict(adaptive_softmax="5,40", vocab_size=40), "below the vocabulary"),
                         (dict(adaptive_softmax="5", tie=True, hidden=64), "--tie"),
                         (dict(adaptive_softmax="2,4,6,8", hidden=16, adaptive_div=4.0), "no units")]:
        with pytest.raises(ConfigError, match=message):
            ModelConfig(**bad)


def test_a_checkpoint_whose_token_order_is_not_a_permutation_is_refused(tiny_corpus, tmp_path):
    from lmgen.config import TrainConfig
    from lmgen.train import train

    out = tmp_path / "run"
    train(TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=16, steps=4, eval_every=4, out=str(out),
                      progress=False), ModelConfig(embed=8, hidden=[12, 16], adaptive_softmax="6,14"),
          log=lambda m: None)
    ckpt = load_checkpoint(out / "last")
    # a real run orders the clusters by training frequency: the head holds the most frequent tokens
    assert not torch.equal(ckpt.model.decoder.rank, torch.arange(ckpt.model.config.vocab_size))
    # sampling and beam search run on it
    for config in (GenerationConfig(max_new_tokens=20), GenerationConfig(max_new_tokens=10, num_beams=3,
                                                                           do_sample=False)):
        assert generate(ckpt.model, ckpt.tokenizer, "The ", config, generator=torch.Generator().manual_seed(1))
    path = out / "last" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["decoder.rank"] = torch.zeros_like(tensors["decoder.rank"])  # every token "rank 0"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="not a permutation"):
        load_checkpoint(out / "last")


@pytest.mark.parametrize("module", ["softmax", "cells", "model", "generation"])
def test_module_doctests(module):
    import doctest
    import importlib

    results = doctest.testmod(importlib.import_module("lmgen." + module),
                              extraglobs={"torch": torch, "ModelConfig": ModelConfig})
    assert results.failed == 0 and results.attempted > 0


@pytest.mark.parametrize("cell", ["lstm", "window"])
def test_a_tied_decoder_starts_with_zero_bias_and_the_embedding_as_its_matrix(cell):
    torch.manual_seed(5)
    model = build_model(ModelConfig(cell=cell, vocab_size=30, embed=16, hidden=16, tie=True))
    assert not model.decoder.bias.any()  # initial logits ~ 0: loss ~ ln V
    assert model.decoder.weight is model.embedding.weight and model.embedding.weight.abs().max() <= 0.1
