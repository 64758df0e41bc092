"""Interventions (lmgen.intervene) on every forward path, against a naive float64 loop,
and lmgen.probe.causal_effect against an independent recomputation."""

from __future__ import annotations

import os
import re
import signal
import sys

import intervene_reference as ref
import numpy as np
import pytest
import torch
from test_sampling import half_rounded, step_through

from lmgen.activations import intervene, regex_mask, trace
from lmgen.config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.evaluate import evaluate_tokens
from lmgen.generation import GenerationConfig
from lmgen.intervene import active, parse_action, scale
from lmgen.model import build_model
from lmgen.probe import URL_REGEX, causal_effect
from lmgen.sampling import Recurrence, beam_search, generate, half_supported

TOK = ref.tokenizer()
TOKENS = torch.tensor([TOK.encode(ref.TEXT[:14]), TOK.encode(ref.TEXT[22:36])])  # [2, 14]
# per cell: units of several kinds and layers, a clamp, an ablation, a scale
SPECS = {
    "lstm": {"L0.c[3]": 2.5, "L1.h[1]": "zero", "L0.f[2]": scale(0.5), "L0.g[5]": -0.75},
    "gru": {"L0.r[3]": 0.1, "L1.h[1]": -0.5, "L0.n[0]": scale(2.0), "L1.z[4]": 0.9},
    "rnn": {"L0.h[3]": 0.7, "L0.h[9]": scale(-1.0)},
}
MODELS = ["lstm2", "gru2", "rnn1", "lstm-sizes"]
needs_half = pytest.mark.skipif(not half_supported(), reason="this torch build lacks the fbgemm float16 kernels")


def model_and_spec(name):
    model = ref.build(name)
    return model, SPECS[model.config.cell]


def naive_edits(spec):
    """{unit: action} -> {(layer, kind, index): function of the computed value} for the naive loop."""
    out = {}
    for unit, action in spec.items():
        layer, kind, index = int(unit[1]), unit[3], int(unit[5:-1])
        if action == "zero":
            out[(layer, kind, index)] = lambda v: torch.zeros_like(v)
        elif isinstance(action, float):
            out[(layer, kind, index)] = lambda v, a=action: torch.full_like(v, a)
        else:
            out[(layer, kind, index)] = lambda v, s=action.factor: v * s
    return out


def naive(model, tokens, spec):
    """Logits [B, T, V] and every layer's activations by the textbook equations, one step at a
    time in float64, each set unit replaced right where it is computed."""
    edits = naive_edits(spec)
    cell, sizes = model.config.cell, model.config.sizes
    W = {n: p.detach().double() for n, p in model.named_parameters()}
    x_seq = W["embedding.weight"][tokens]  # [B, T, E]
    B, T = tokens.shape
    acts = []

    def node(layer, kind, v):  # v [B, H]
        v = v.clone()
        for (lay, k, j), fn in edits.items():
            if lay == layer and k == kind:
                v[:, j] = fn(v[:, j])
        return v

    for layer, H in enumerate(sizes):
        w_ih, w_hh = W[f"rnn.weight_ih_l{layer}"], W[f"rnn.weight_hh_l{layer}"]
        b_ih, b_hh = W[f"rnn.bias_ih_l{layer}"], W[f"rnn.bias_hh_l{layer}"]
        h, c = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
        rows = []
        for t in range(T):
            gi, gh = x_seq[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
            if cell == "lstm":
                i = node(layer, "i", (gi + gh)[:, :H].sigmoid())
                f = node(layer, "f", (gi + gh)[:, H : 2 * H].sigmoid())
                g = node(layer, "g", (gi + gh)[:, 2 * H : 3 * H].tanh())
                o = node(layer, "o", (gi + gh)[:, 3 * H :].sigmoid())
                c = node(layer, "c", f * c + i * g)
                h = node(layer, "h", o * c.tanh())
                rows.append(dict(h=h, c=c, i=i, f=f, g=g, o=o))
            elif cell == "gru":
                r = node(layer, "r", (gi[:, :H] + gh[:, :H]).sigmoid())
                z = node(layer, "z", (gi[:, H : 2 * H] + gh[:, H : 2 * H]).sigmoid())
                n = node(layer, "n", (gi[:, 2 * H :] + r * gh[:, 2 * H :]).tanh())
                h = node(layer, "h", (1 - z) * n + z * h)
                rows.append(dict(h=h, r=r, z=z, n=n))
            else:
                h = node(layer, "h", (gi + gh).tanh())
                rows.append(dict(h=h))
        acts.append({k: torch.stack([r[k] for r in rows], 1) for k in rows[0]})  # [B, T, H]
        x_seq = acts[-1]["h"]
    logits = x_seq @ W["decoder.weight"].T + W["decoder.bias"]
    return logits, acts


# -- no intervention: every path exactly as before ---------------------------------------------


@pytest.mark.parametrize("name", list(ref.CONFIGS))
def test_no_intervention_is_bit_identical_to_before(name):
    """Outputs of every path (fused forward in eval and training, both step engines, trace,
    beam search, sampling, evaluation) against those saved before interventions existed."""
    saved = torch.load(ref.PATH)
    model = ref.build(name, saved["models"][name]["state"])
    before = ref.unpack(*saved["models"][name]["outputs"])
    now = ref.outputs(model)
    with intervene(model, {}) as found:
        assert found is None and active(model) is None
        empty = ref.outputs(model)
    assert now.keys() == before.keys() == empty.keys()
    exact = saved["platform"] == ref.platform()  # other CPUs round differently: there, to 1e-6
    for key in before:
        torch.testing.assert_close(empty[key], now[key], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(now[key], before[key], rtol=0 if exact else 1e-6, atol=0 if exact else 1e-6,
                                   equal_nan=True, msg=f"{name} {key}")


# -- under an intervention: every path against the naive loop -----------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_trace_reads_exactly_the_set_values_and_equals_the_naive_loop(name):
    model, spec = model_and_spec(name)
    text = ref.TEXT * 2
    with intervene(model, spec):
        tr = trace(model, TOK, text)
        chunked = trace(model, TOK, text, chunk=23)  # the state carried across chunks of a stepped layer
    _, acts = naive(model, torch.tensor([[TOK.end_id] + TOK.encode(text)]), spec)
    for unit, action in spec.items():
        layer, kind, index = int(unit[1]), unit[3], int(unit[5:-1])
        values = tr.unit(layer, kind, index)
        if not hasattr(action, "factor"):  # a clamp: exactly the value, at every step
            assert np.array_equal(values, np.full(len(tr), 0.0 if action == "zero" else action, dtype=np.float32))
    for layer, layer_acts in enumerate(tr.layers):
        for kind, values in layer_acts.items():
            np.testing.assert_allclose(values, acts[layer][kind][0, 1:].numpy(), atol=2e-5, rtol=1e-5)
            np.testing.assert_array_equal(chunked.layers[layer][kind], values)
    plain = trace(model, TOK, text)
    assert not np.allclose(plain.layers[-1]["h"], tr.layers[-1]["h"])  # the edits reach the last layer


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("precision", ["float32", pytest.param("float16", marks=needs_half)])
def test_step_engines_under_intervention_equal_a_naive_loop(name, precision):
    model, spec = model_and_spec(name)
    oracle = model if precision == "float32" else half_rounded(model)
    with intervene(model, spec):
        rec = Recurrence(model, precision)
        assert rec.precision == precision and rec.edits is not None
        steps, _ = step_through(rec, model, TOKENS)
    expected, _ = naive(oracle, TOKENS, spec)
    torch.testing.assert_close(steps.double(), expected, atol=1e-4, rtol=1e-5)
    plain, _ = step_through(Recurrence(model, precision), model, TOKENS)  # made outside: no edits
    assert (plain - steps).abs().max() > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_fused_forward_under_intervention_equals_the_step_engine(name):
    model, spec = model_and_spec(name)
    with intervene(model, spec), torch.no_grad():
        whole, state = model(TOKENS)
        steps, step_state = step_through(Recurrence(model, "float32"), model, TOKENS)
        # carried state: two windows equal one
        first, mid = model(TOKENS[:, :5])
        second, _ = model(TOKENS[:, 5:], mid)
    torch.testing.assert_close(steps, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(state if isinstance(state, tuple) else (state,), step_state if isinstance(state, tuple)
                    else (step_state,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(whole.double(), naive(model, TOKENS, spec)[0], atol=1e-4, rtol=1e-5)


def test_evaluation_and_beam_search_run_under_the_intervention():
    model, spec = model_and_spec("lstm2")
    ids = TOK.encode(ref.TEXT)
    with intervene(model, spec):
        nll = evaluate_tokens(model, np.array(ids), batch=1, bptt=16).nll
        beams = beam_search(model, TOK, "the ", GenerationConfig(num_beams=3, do_sample=False, max_new_tokens=10,
                                                                  num_return_sequences=3))
    logits, _ = naive(model, torch.tensor([[TOK.end_id] + ids[:-1]]), spec)
    logp = torch.log_softmax(logits[0], -1)
    assert nll == pytest.approx(-float(logp.gather(1, torch.tensor(ids)[:, None]).sum()), rel=1e-6)
    prompt = [TOK.end_id] + TOK.encode("the ")
    for beam in beams:  # each score is the naive model's log-probability of the beam's tokens
        seq = prompt + beam.ids + ([TOK.end_id] if beam.stop == "end" else [])
        logits, _ = naive(model, torch.tensor([seq[:-1]]), spec)
        logp = torch.log_softmax(logits[0], -1)[len(prompt) - 1 :]
        assert beam.score == pytest.approx(float(logp.gather(1, torch.tensor(seq[len(prompt):])[:, None]).sum()),
                                           abs=1e-4)
    plain = beam_search(model, TOK, "the ", GenerationConfig(num_beams=3, do_sample=False, max_new_tokens=10,
                                                              num_return_sequences=3))
    assert [b.score for b in plain] != [b.score for b in beams]


def test_sampling_under_a_clamp_equals_the_naive_loop():
    """Greedy generation with a clamp: each token the argmax of the naive clamped model."""
    model, spec = model_and_spec("gru2")
    config = GenerationConfig(do_sample=False, max_new_tokens=15)
    with intervene(model, spec):
        sample = generate(model, TOK, "see ", config)[0]
    seq = [TOK.end_id] + TOK.encode("see ")
    for token in sample.ids:
        logits, _ = naive(model, torch.tensor([seq]), spec)
        assert token == int(logits[0, -1].argmax())
        seq.append(token)


def test_actions_mean_fn_nesting_and_restoring():
    model = ref.build("lstm2")
    tr = trace(model, TOK, ref.TEXT)
    mean = float(tr.layers[0]["c"][:, 3].astype(np.float64).mean())
    with torch.no_grad():
        with intervene(model, {"L0.c[3]": "mean"}, means=tr):
            by_mean, _ = model(TOKENS)
            assert np.all(trace(model, TOK, "see").unit(0, "c", 3) == np.float32(mean))
        with intervene(model, {"L0.c[3]": mean}):
            assert torch.equal(model(TOKENS)[0], by_mean)
        with intervene(model, {"L1.h[2]": lambda v: -v}):
            by_fn, _ = model(TOKENS)
        with intervene(model, {"L1.h[2]": "*-1"}):
            assert torch.equal(model(TOKENS)[0], by_fn)
        with intervene(model, {"L0.c[3]": 1.0, "L0.h[0]": 0.5}) as outer:
            with intervene(model, {"L0.c[3]": 2.0}) as inner:  # adds to the outer, wins on L0.c[3]
                assert str(inner) == "L0.h[0] = 0.5, L0.c[3] = 2"
                nested = trace(model, TOK, "see")
            assert active(model) is outer.layers
        assert np.all(nested.unit(0, "c", 3) == 2.0) and np.all(nested.unit(0, "h", 0) == 0.5)
        with pytest.raises(RuntimeError), intervene(model, {"L0.c[3]": 1.0}):
            raise RuntimeError("inside")
    assert active(model) is None


def test_gradients_flow_through_an_intervention():
    """Training under an intervention: setting every unit of layer 0's h cuts layer 0 (and the
    embedding) off from the loss, and nothing else."""
    model = ref.build("lstm2").train()
    spec = {f"L0.h[{j}]": 0.25 for j in range(16)}
    with intervene(model, spec):
        loss = model(TOKENS[:, :-1], targets=TOKENS[:, 1:])[0]
    loss.backward()
    for cut in (model.rnn.weight_hh_l0, model.embedding.weight):
        assert cut.grad is None or float(cut.grad.abs().sum()) == 0.0
    assert float(model.rnn.weight_hh_l1.grad.abs().sum()) > 0


@pytest.mark.parametrize("spec, message", [
    ({"L2.c[0]": 1.0}, "layer 2 is out of range; this model has layers 0..1"),
    ({"L0.r[0]": 1.0}, "a lstm layer has no kind 'r'; choose one of h, c, i, f, g, o"),
    ({"L1.h[16]": 1.0}, "index 16 is out of range; layer 1 has units 0..15"),
    ({"L0.c3": 1.0}, "cannot read the unit 'L0.c3'"),
    ({"L0.c[3]": "mean"}, "'mean' needs the unit's mean value"),
    ({"L0.c[3]": "big"}, "cannot read the value 'big'"),
    ({"L0.c[3]": None}, "cannot apply None to L0.c[3]"),
])
def test_bad_units_and_values_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)), \
            intervene(ref.build("lstm2"), spec):
        pass


def test_models_without_units_refuse():
    window = build_model(ModelConfig(cell="window", vocab_size=10, embed=4, hidden=8, window=3))
    with pytest.raises(ConfigError, match="interventions need an LSTM, GRU or RNN model"), \
            intervene(window, {"L0.h[0]": 1.0}):
        pass
    assert parse_action(" -2e-1 ") == -0.2


# -- causal effect ---------------------------------------------------------------------------------


def test_causal_effect_equals_an_independent_recomputation():
    model = ref.build("lstm2")
    text = ref.TEXT * 3
    mask = regex_mask(text, URL_REGEX)
    effect = causal_effect(model, TOK, text, "L0.c[3]", mask, n_random=6, rows=4, window=37)
    ids = TOK.encode(text)
    inputs = torch.tensor([[TOK.end_id] + ids[:-1]])
    inside = torch.from_numpy(mask)  # a char model: one token per character

    def losses(spec, means=None):  # per-token loss of the model's own forward under spec
        with intervene(model, spec, means=means), torch.no_grad():
            logp = torch.log_softmax(model(inputs)[0][0].double(), -1)
        return -logp.gather(1, torch.tensor(ids)[:, None])[:, 0]

    tr = trace(model, TOK, text, kinds=("c",))
    base = losses({})
    assert effect.tokens == len(ids) and effect.inside == int(mask.sum())
    assert effect.loss_inside == pytest.approx(float(base[inside].mean()), abs=1e-6)
    assert effect.mean_value == pytest.approx(float(tr.layers[0]["c"][:, 3].mean()), abs=1e-6)
    for unit, zero_inside, zero_outside, mean_inside in (
            ["L0.c[3]", effect.zero_inside, effect.zero_outside, effect.mean_inside],
            *zip(effect.null_units[:2], effect.null_zero_inside, effect.null_zero_outside, effect.null_mean_inside)):
        zero = losses({unit: "zero"}) - base
        mean = losses({unit: "mean"}, means=tr) - base
        assert zero_inside == pytest.approx(float(zero[inside].mean()), abs=2e-5)
        assert zero_outside == pytest.approx(float(zero[~inside].mean()), abs=2e-5)
        assert mean_inside == pytest.approx(float(mean[inside].mean()), abs=2e-5)
    assert len(set(effect.null_units)) == 6 and "L0.c[3]" not in effect.null_units
    below = np.sum(effect.null_zero_inside < effect.zero_inside) + 0.5 * np.sum(
        effect.null_zero_inside == effect.zero_inside)
    assert effect.percentile_zero == pytest.approx(100 * below / 6)
    text_out = str(effect)
    assert "causal effect of L0.c[3]" in text_out and "6 random L0.c units" in text_out
    with pytest.raises(ConfigError, match="tokens both inside and outside"):
        causal_effect(model, TOK, "abc", "L0.c[3]", np.ones(3, dtype=bool))


# -- CLI and REPL -----------------------------------------------------------------------------------


def test_cli_sample_with_clamp_and_ablate_equals_the_library(tiny_checkpoint, capsys):
    from lmgen import load
    from lmgen.cli import main

    flags = ["--greedy", "--prompt", "The ", "--max-new-tokens", "60", "--precision", "float32"]
    assert main(["sample", str(tiny_checkpoint), *flags, "--clamp", "L0.c[3]=4", "--ablate", "L0.h[7]"]) == 0
    out = capsys.readouterr().out
    model, tok = load(tiny_checkpoint)
    config = GenerationConfig(do_sample=False, max_new_tokens=60)
    with intervene(model, {"L0.c[3]": 4.0, "L0.h[7]": "zero"}):
        expected = generate(model, tok, "The ", config)[0].text
    assert out == f"The {expected}\n"
    assert expected != generate(model, tok, "The ", config)[0].text


@pytest.mark.parametrize("flags, code, message", [
    (["--clamp", "L0.c[3]"], 2, "argument --clamp: cannot read 'L0.c[3]': write UNIT=VALUE"),
    (["--clamp", "L0.c[3]=mean"], 2, "L0.c[3]=mean needs the unit's mean"),
    (["--ablate", "c[3]"], 2, "argument --ablate: cannot read the unit 'c[3]'"),
    (["--clamp", "L1.c[0]=1"], 1, "lmgen: error: no unit L1.c[0]: layer 1 is out of range; this model has layers 0..0"),
    (["--ablate", "L0.z[0]"], 1, "a lstm layer has no kind 'z'"),
    (["--ablate", "L0.h[32]"], 1, "index 32 is out of range; layer 0 has units 0..31"),
])
def test_cli_intervention_errors_are_one_clear_line(tiny_checkpoint, capsys, flags, code, message):
    from lmgen.cli import main

    try:
        result = main(["sample", str(tiny_checkpoint), *flags])
    except SystemExit as exc:  # argparse: usage, then one error line
        result = exc.code
    err = capsys.readouterr().err
    assert result == code and message in err and "Traceback" not in err


def test_repl_clamp_ablate_clear_and_show(tiny_checkpoint, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    from lmgen import load

    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", LMGEN_CACHE=str(tmp_path),
               HOME=str(tmp_path), TERM="dumb")
    child = pexpect.spawn(sys.executable, ["-m", "lmgen", "repl", str(tiny_checkpoint), "--max-new-tokens", "40",
                                           "--precision", "float32", "--ablate", "L0.h[7]"],
                          env=env, encoding="utf-8", timeout=60, dimensions=(40, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        child.expect_exact("interventions L0.h[7] = 0 (zero);")  # the --ablate flag, shown at the start
        child.expect_exact("lmgen> ")
        child.sendline(":clamp L0.c[3]=-2")
        child.expect_exact("interventions L0.h[7] = 0 (zero), L0.c[3] = -2;")
        child.expect_exact("lmgen> ")
        child.sendline("The ")
        child.expect(r"The \r?\n")  # the typed line, echoed
        child.expect(r"The ([^\r\n]*)\r?\n")  # the prompt again, and its continuation
        shown = child.match.group(1)
        child.expect_exact("lmgen> ")
        for command, message in ((":clamp L3.c[0]=1", "layer 3 is out of range; this model has layers 0..0"),
                                 (":clamp L0.c[3]", "write UNIT=VALUE, e.g. L0.c[43]=2.5"),
                                 (":ablate L0.h[99]", "index 99 is out of range; layer 0 has units 0..31"),
                                 (":clear L0.c[9]", "L0.c[9] has no :clamp or :ablate to clear")):
            child.sendline(command)
            child.expect_exact(message)
            child.expect_exact("lmgen> ")
        child.sendline(":clear L0.h[7]")
        child.expect_exact("interventions L0.c[3] = -2;")
        child.expect_exact("lmgen> ")
        child.sendline(":clear")
        child.expect(r"seed 0; (\d+) tokens of text")
        assert "interventions" not in child.before + child.after
        child.expect_exact("lmgen> ")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
    model, tok = load(tiny_checkpoint)
    config = GenerationConfig(temperature=0.8, max_new_tokens=40)  # the REPL's sampling, seed 0
    with intervene(model, {"L0.h[7]": "zero", "L0.c[3]": -2.0}):
        expected = generate(model, tok, "The ", config, generator=torch.Generator().manual_seed(0))[0].text
    assert shown == expected.split("\n")[0]
    assert expected != generate(model, tok, "The ", config, generator=torch.Generator().manual_seed(0))[0].text
