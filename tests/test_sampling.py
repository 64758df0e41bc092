"""Sampling: every strategy against an independent oracle (naive loops, brute force, statistics)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lmgen.config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.model import RNNLM
from lmgen.sampling import (
    GenerationConfig,
    Recurrence,
    beam_search,
    choose_tokens,
    config_from_flags,
    generate,
    half_supported,
    prime,
    sample_generators,
    stream,
    stream_samples,
)
from lmgen.tokenizer import TextDecoder, build_tokenizer

TEXT = "the cat sat on the mat.\nA dog, a log!\n"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("char", [TEXT])


def tiny_model(vocab: int, cell: str = "lstm", layers: int = 2, seed: int = 0, sharp: float = 20.0,
               tie: bool = False) -> RNNLM:
    """A random model whose next-token distributions are far from uniform (sharp decoder)."""
    torch.manual_seed(seed)
    hidden = 16
    model = RNNLM(ModelConfig(cell=cell, vocab_size=vocab, embed=hidden if tie else 8, hidden=hidden,
                              layers=layers, tie=tie)).eval()
    with torch.no_grad():
        if not tie:
            model.decoder.weight.mul_(sharp)
        model.decoder.bias.normal_(0, 1)
    return model


def naive_logits(model, ids):
    """Re-run the whole prefix: the next-token logits [V] after ids."""
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, -1]


def naive_greedy(model, tok, prompt, max_new, penalty=1.0):
    ids = [tok.end_id] + tok.encode(prompt)
    out = []
    for _ in range(max_new):
        logits = naive_logits(model, ids)
        if penalty != 1.0:
            for t in set(ids[1:]):
                logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
        t = int(logits.argmax())
        if t == tok.end_id:
            return out, "end"
        out.append(t)
        ids.append(t)
    return out, "length"


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_p=1.5), "--top-p must be in (0, 1], got 1.5"),
    (dict(top_p=0.0), "--top-p must be in (0, 1], got 0.0"),
    (dict(temperature=0.0), "--temperature must be > 0"),
    (dict(temperature=-1.0), "--temperature must be > 0"),
    (dict(top_k=0), "--top-k must be a whole number >= 1, got 0"),
    (dict(num_beams=0), "--beam must be a whole number in [1, 1024], got 0"),
    (dict(num_beams=1025), "--beam must be a whole number in [1, 1024], got 1025"),
    (dict(max_new_tokens=0), "--max-new-tokens must be a whole number >= 1"),
    (dict(repetition_penalty=0.0), "--repetition-penalty must be > 0"),
    (dict(num_return_sequences=0), "--num-samples must be a whole number >= 1"),
    (dict(num_beams=3, num_return_sequences=4), "--num-samples must be <= --beam"),
    (dict(num_beams=3, top_p=0.9), "--top-p cannot be used with --beam"),
])
def test_config_names_the_bad_flag(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        GenerationConfig(**kwargs)


def test_flags_that_would_be_ignored_are_refused():
    with pytest.raises(ConfigError, match="--temperature only apply to sampling"):
        config_from_flags(greedy=True, temperature=0.5)
    with pytest.raises(ConfigError, match="--top-k only apply to sampling"):
        config_from_flags(beam=3, top_k=5)
    with pytest.raises(ConfigError, match="--length-penalty only applies to beam"):
        config_from_flags(length_penalty=0.5)
    assert config_from_flags().temperature == 0.8
    assert config_from_flags(beam=4, num_samples=2).strategy == "beam"
    assert config_from_flags(beam=1).strategy == "greedy"


# -- the recurrence -----------------------------------------------------------------------


@pytest.mark.parametrize("cell, layers, tie, table", [("lstm", 2, False, True), ("lstm", 2, False, False),
                                                      ("gru", 2, False, True), ("rnn", 1, False, True),
                                                      ("lstm", 1, True, True)])
def test_step_by_step_equals_the_model_on_the_whole_sequence(cell, layers, tie, table, monkeypatch):
    if not table:  # the path for large vocabularies: embed, then multiply
        monkeypatch.setattr(Recurrence, "TABLE_LIMIT", 0)
    model = tiny_model(12, cell, layers, tie=tie)
    tokens = torch.randint(0, 12, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, final = model(tokens)  # [B, T, V]
    rec = Recurrence(model)
    assert rec.fast and (cell != "lstm" or (rec.table is not None) == table)
    steps, state = step_through(rec, model, tokens)
    torch.testing.assert_close(steps, whole, atol=1e-5, rtol=1e-5)
    assert_states_close(state, final, tol=1e-5)


def step_through(rec, model, tokens):
    """Feed tokens [B, T] one step at a time -> logits [B, T, V] and the final model-format state."""
    state = rec.split(model.init_state(tokens.shape[0]))
    steps = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state = rec.step(tokens[:, t], state)
            steps.append(logits)
    return torch.stack(steps, 1), rec.join(state)


def assert_states_close(a, b, tol):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


def half_rounded(model):
    """A copy of ``model`` whose weight matrices are rounded to float16 (biases, embedding kept):
    the numbers the float16 recurrence multiplies by."""
    import copy

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if name.startswith(("rnn.weight", "decoder.weight")):
                param.copy_(param.half().float())
    return rounded


needs_half = pytest.mark.skipif(not half_supported(), reason="this torch build lacks the fbgemm float16 kernels")


@needs_half
@pytest.mark.parametrize("cell, layers, table", [("lstm", 3, True), ("lstm", 2, False), ("gru", 2, True),
                                                 ("gru", 2, False), ("rnn", 2, True), ("rnn", 1, False)])
def test_float16_step_equals_the_model_with_rounded_weights(cell, layers, table, monkeypatch):
    if not table:
        monkeypatch.setattr(Recurrence, "TABLE_LIMIT", 0)
    model = tiny_model(12, cell, layers)
    tokens = torch.randint(0, 12, (4, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, final = half_rounded(model)(tokens)  # the oracle: nn.LSTM / nn.GRU / nn.RNN itself
        exact, _ = model(tokens)
    rec = Recurrence(model, "float16")
    assert rec.precision == "float16"
    steps, state = step_through(rec, model, tokens)
    torch.testing.assert_close(steps, whole, atol=2e-5, rtol=2e-5)
    assert not torch.allclose(steps, exact, atol=1e-6)  # it really ran on rounded weights
    assert_states_close(state, final, tol=2e-5)


@needs_half
def test_packed_linear_is_the_rounded_product_with_one_or_several_threads():
    """One row goes through ATen's single-threaded call, several rows on several threads
    through the quantized op: the same bits either way, the product of the rounded weight."""
    from lmgen.sampling.recurrence import _PackedLinear

    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(300, 70, generator=gen), torch.randn(300, generator=gen)
    linear = _PackedLinear(weight, bias)
    x = torch.randn(6, 70, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = linear(x)
        rows = torch.cat([linear(x[r : r + 1]) for r in range(6)])
        torch.set_num_threads(2)
        threaded = linear(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, threaded)
    for got in (single, rows):
        torch.testing.assert_close(got, F.linear(x, weight.half().float(), bias), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(single, F.linear(x, weight, bias), atol=1e-6)  # really rounded


@needs_half
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float16_greedy_equals_a_naive_loop_over_the_rounded_model(tok, cell):
    model = tiny_model(tok.vocab_size, cell)
    [sample] = generate(model, tok, "the c", GenerationConfig(do_sample=False, max_new_tokens=25, precision="float16"))
    # prompt priming runs the model itself (float32); every later step the rounded weights
    ids = [tok.end_id] + tok.encode("the c")
    rounded, out = half_rounded(model), []
    with torch.no_grad():
        prompt_logits, state = model(torch.tensor([ids]))
        logits = prompt_logits[0, -1]
        for _ in range(25):
            t = int(logits.argmax())
            if t == tok.end_id:
                break
            out.append(t)
            step_logits, state = rounded(torch.tensor([[t]]), state)
            logits = step_logits[0, -1]
    assert sample.ids == out


@needs_half
def test_float16_weights_are_repacked_when_the_model_changes(tok):
    model = tiny_model(tok.vocab_size)
    config = GenerationConfig(do_sample=False, max_new_tokens=15, precision="float16")
    first = generate(model, tok, "the", config)[0].ids
    assert Recurrence(model, "float16").layers is Recurrence(model, "float16").layers  # cached
    with torch.no_grad():
        model.decoder.bias.zero_()
        model.decoder.bias[tok.encode("z")[0]] = 100.0  # now every step says "z"
    assert generate(model, tok, "the", config)[0].ids == tok.encode("z" * 15) != first


@needs_half
@pytest.mark.parametrize("table", [True, False])
def test_float16_cache_lets_the_model_go(tok, table, monkeypatch):
    import gc
    import weakref

    if not table:
        monkeypatch.setattr(Recurrence, "TABLE_LIMIT", 0)
    model = tiny_model(tok.vocab_size)
    generate(model, tok, "the", GenerationConfig(do_sample=False, max_new_tokens=3, precision="float16"))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the packed-weights cache holds no reference to its key


@needs_half
def test_float16_works_for_a_model_built_in_inference_mode(tok):
    with torch.inference_mode():  # its parameters are inference tensors: no version counter
        model = tiny_model(tok.vocab_size)
    config = GenerationConfig(do_sample=False, max_new_tokens=10)
    assert generate(model, tok, "the", config.replace(precision="float16"))[0].ids == \
        generate(half_rounded(model), tok, "the", config)[0].ids


def test_precision_auto_and_errors(tok):
    model = tiny_model(tok.vocab_size)
    assert Recurrence(model, "auto").precision == ("float16" if half_supported() else "float32")
    assert Recurrence(model).precision == "float32"
    with pytest.raises(ConfigError, match="--precision must be one of"):
        GenerationConfig(precision="int8")
    from lmgen.model import WindowLM

    window = WindowLM(ModelConfig(cell="window", vocab_size=tok.vocab_size, embed=4, hidden=8, window=3))
    assert Recurrence(window, "auto").precision == "float32"  # the generic path: auto falls back
    with pytest.raises(ConfigError, match="float16 needs an LSTM/GRU/RNN model on the CPU"):
        Recurrence(window, "float16")


@pytest.mark.parametrize("cell, precision", [("lstm", "float32"), ("gru", "float32"), ("rnn", "float32"),
                                              ("lstm", "float16"), ("gru", "float16"), ("window", "float32")])
def test_steps_record_no_autograd_history(tok, cell, precision):
    """Generation runs outside inference mode (see sample_steps): every path must still leave
    the model's trainable parameters out of its results."""
    if precision == "float16" and not half_supported():
        pytest.skip("this torch build lacks the fbgemm float16 kernels")
    if cell == "window":
        from lmgen.model import WindowLM

        model = WindowLM(ModelConfig(cell="window", vocab_size=tok.vocab_size, embed=4, hidden=8, window=3))
    else:
        model = tiny_model(tok.vocab_size, cell)
    assert all(p.requires_grad for p in model.parameters())
    rec = Recurrence(model, precision)
    logits, layers = prime(model, tok, "ab").catch_up(rec)
    for token in tok.encode("cd"):
        logits, layers = rec.step(torch.tensor([token]), layers)
        assert not logits.requires_grad and logits.grad_fn is None


# -- greedy and its equivalents -------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("prompt", ["", "the c"])
def test_greedy_equals_a_naive_loop_over_the_whole_prefix(tok, cell, prompt):
    model = tiny_model(tok.vocab_size, cell)
    [sample] = generate(model, tok, prompt, GenerationConfig(do_sample=False, max_new_tokens=25))
    ids, stop = naive_greedy(model, tok, prompt, 25)
    assert sample.ids == ids and sample.stop == stop
    assert sample.text == tok.decode(ids)


def test_repetition_penalty_greedy_equals_naive_loop(tok):
    model = tiny_model(tok.vocab_size, seed=3)
    config = GenerationConfig(do_sample=False, max_new_tokens=30, repetition_penalty=1.7)
    [sample] = generate(model, tok, "a ca", config)
    assert (sample.ids, sample.stop) == naive_greedy(model, tok, "a ca", 30, penalty=1.7)
    plain = generate(model, tok, "a ca", config.replace(repetition_penalty=1.0))[0]
    assert len(set(sample.ids)) >= len(set(plain.ids))  # the penalty spreads the choices


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_1_low_temperature_and_beam_1_equal_greedy(tok, seed):
    model = tiny_model(tok.vocab_size, seed=seed)
    greedy = generate(model, tok, "the", GenerationConfig(do_sample=False, max_new_tokens=30))[0]
    g = torch.Generator().manual_seed(seed)
    top1 = generate(model, tok, "the", GenerationConfig(top_k=1, temperature=1.5, max_new_tokens=30), generator=g)[0]
    cold = generate(model, tok, "the", GenerationConfig(temperature=1e-6, max_new_tokens=30), generator=g)[0]
    assert top1.ids == greedy.ids and cold.ids == greedy.ids
    for alpha in (0.0, 1.0, 2.0):
        beam1 = beam_search(model, tok, "the", GenerationConfig(num_beams=1, max_new_tokens=30, do_sample=False,
                                                               length_penalty=alpha))[0]
        assert (beam1.ids, beam1.stop) == (greedy.ids, greedy.stop)


def test_generation_stops_exactly_at_end(tok):
    model = tiny_model(tok.vocab_size)
    with torch.no_grad():
        model.decoder.bias[tok.end_id] = 100.0  # [END] always most likely: empty documents
    g = torch.Generator().manual_seed(0)
    assert [s.stop for s in generate(model, tok, "x", GenerationConfig(num_return_sequences=3, max_new_tokens=9),
                                     generator=g)] == ["end"] * 3
    config = GenerationConfig(do_sample=False, max_new_tokens=7, min_new_tokens=4)
    [s] = generate(model, tok, "", config)  # [END] barred for 4 tokens, then chosen at once
    assert len(s.ids) == 4 and s.stop == "end" and tok.end_id not in s.ids
    with torch.no_grad():
        model.decoder.bias[tok.end_id] = -100.0  # never [END]: every sample runs to the limit
    samples = generate(model, tok, "", GenerationConfig(num_return_sequences=4, max_new_tokens=13), generator=g)
    assert all(len(s.ids) == 13 and s.stop == "length" for s in samples)


def test_samples_stop_each_at_their_own_end_and_match_one_by_one(tok):
    model = tiny_model(tok.vocab_size, seed=5)
    with torch.no_grad():
        model.decoder.bias[tok.end_id] = 3.0  # [END] likely enough that samples differ in length
    config = GenerationConfig(num_return_sequences=6, max_new_tokens=40, top_p=0.95, repetition_penalty=1.1)
    seeds = list(range(100, 106))
    batch = generate(model, tok, "the", config, generator=[torch.Generator().manual_seed(s) for s in seeds])
    alone = [generate(model, tok, "the", config.replace(num_return_sequences=1),
                      generator=[torch.Generator().manual_seed(s)])[0] for s in seeds]
    assert [s.ids for s in batch] == [s.ids for s in alone]
    assert len({len(s.ids) for s in batch}) > 1 and any(s.stop == "end" for s in batch)
    for s in batch:
        assert tok.end_id not in s.ids and (s.stop == "end" or len(s.ids) == 40)


def test_same_seed_same_text_and_another_seed_another(tok):
    model = tiny_model(tok.vocab_size, sharp=3.0)
    config = GenerationConfig(max_new_tokens=60, num_return_sequences=3, min_new_tokens=60)

    def run(seed):
        return [s.text for s in generate(model, tok, "a", config, generator=torch.Generator().manual_seed(seed))]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_continuing_a_context_equals_one_long_generation(tok):
    model = tiny_model(tok.vocab_size, sharp=2.0)
    with torch.no_grad():
        model.decoder.bias[tok.end_id] = -50.0
    config = GenerationConfig(do_sample=False, max_new_tokens=12)
    ctx = prime(model, tok, "the")
    first = "".join(stream(model, tok, ctx, config))
    second = "".join(stream(model, tok, ctx, config))
    [whole] = generate(model, tok, "the", config.replace(max_new_tokens=24))
    assert first + second == whole.text
    assert ctx.text(tok) == "the" + whole.text and ctx.stop == "length"


# -- sampling statistics and sets -----------------------------------------------------------


def chi_square_ok(counts, probs, n):
    """Pearson chi-square against probs (cells with expected < 5 pooled), at p = 0.001."""
    expected = [p * n for p in probs]
    cells, pool_o, pool_e = [], 0.0, 0.0
    for o, e in zip(counts, expected):
        if e >= 5:
            cells.append((o, e))
        else:
            pool_o, pool_e = pool_o + o, pool_e + e
    if pool_e > 0:
        cells.append((pool_o, pool_e))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    # Wilson-Hilferty: the 0.999 quantile of chi-square(df)
    z = 3.0902
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, critical


@pytest.mark.parametrize("config", [GenerationConfig(temperature=0.7), GenerationConfig(temperature=1.3, top_k=4),
                                    GenerationConfig(top_p=0.8)])
def test_first_token_distribution_matches_softmax(tok, config):
    model = tiny_model(tok.vocab_size, seed=2, sharp=4.0)
    n = 4000
    config = config.replace(max_new_tokens=1, num_return_sequences=n)
    samples = generate(model, tok, "the ", config, generator=torch.Generator().manual_seed(0))
    first = [s.ids[0] if s.ids else tok.end_id for s in samples]
    counts = torch.bincount(torch.tensor(first), minlength=tok.vocab_size).tolist()
    probs = torch.softmax(naive_logits(model, [0] + tok.encode("the ")).double() / config.temperature, -1)
    order = probs.argsort(descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for rank, v in enumerate(order.tolist()):  # the allowed set, built independently
        if (config.top_k is not None and rank >= config.top_k) or mass >= config.top_p:
            break
        keep[v] = True
        mass += float(probs[v])
    expected = torch.where(keep, probs, 0.0)
    expected = (expected / expected.sum()).tolist()
    assert all(c == 0 for c, k in zip(counts, keep.tolist()) if not k)  # never outside the set
    stat, critical = chi_square_ok([c for c, k in zip(counts, keep.tolist()) if k],
                                   [e for e, k in zip(expected, keep.tolist()) if k], n)
    assert stat < critical, (stat, critical)


def test_top_k_top_p_never_leave_their_set_along_a_text(tok):
    model = tiny_model(tok.vocab_size, seed=4, sharp=3.0)
    for config in (GenerationConfig(top_k=3, temperature=2.0), GenerationConfig(top_p=0.6, temperature=2.0),
                   GenerationConfig(top_k=2, top_p=0.9)):
        config = config.replace(max_new_tokens=40, num_return_sequences=3)
        for sample in generate(model, tok, "a", config, generator=torch.Generator().manual_seed(1)):
            ids = [0] + tok.encode("a")
            for t in sample.ids + ([tok.end_id] if sample.stop == "end" else []):
                probs = torch.softmax(naive_logits(model, ids).double() / config.temperature, -1)
                ranked = probs.argsort(descending=True).tolist()
                allowed, mass = set(), 0.0
                for rank, v in enumerate(ranked):
                    if (config.top_k is not None and rank >= config.top_k) or mass >= config.top_p - 1e-9:
                        break
                    allowed.add(v)
                    mass += float(probs[v])
                assert t in allowed
                ids.append(t)


def test_choose_tokens_stays_in_set_for_random_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 30, generator=gen) * 3
    u = torch.rand(500, generator=gen, dtype=torch.float64)
    u[:5] = torch.tensor([0.0, 1 - 2**-53, 0.5, 1e-300, 0.999999])
    for k, p in ((1, 1.0), (5, 1.0), (None, 0.5), (7, 0.3), (None, 1e-9)):
        config = GenerationConfig(top_k=k, top_p=p)
        tokens = choose_tokens(logits, config, u)  # 500 rows: the vectorised search
        rows = torch.cat([choose_tokens(logits[r : r + 1], config, u[r : r + 1]) for r in range(500)])
        assert torch.equal(tokens, rows)  # one row at a time: the Python bisection, the same tokens
        order = logits.argsort(dim=-1, descending=True)
        probs = torch.softmax(logits.double(), -1)
        for row in range(500):
            ranked = order[row].tolist()
            allowed, mass = set(), 0.0
            for rank, v in enumerate(ranked):
                if (k is not None and rank >= k) or mass >= p - 1e-12:
                    break
                allowed.add(v)
                mass += float(probs[row, v])
            assert int(tokens[row]) in allowed


def test_both_inversions_agree_on_edge_cases():
    """The vectorised search and the row-by-row bisection (choose_tokens' two paths) pick the
    same tokens, also at the edges: probabilities of exactly 0 (-inf logits, at the end of
    the order), fewer positive tokens than top-k, u = 0, u = 1 (the fallback)."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(400, 12, generator=gen) * torch.tensor([0.1, 5.0, 80.0, 800.0]).repeat(100)[:, None]
    logits[::3, -1] = -math.inf
    logits[1::3, 2:] = -math.inf  # two tokens with a probability above 0
    u = torch.rand(400, generator=gen, dtype=torch.float64)
    u[::7] = 1.0
    u[1::7] = 0.0
    u[2::7] = 1 - 2**-53
    for config in (GenerationConfig(), GenerationConfig(temperature=0.3), GenerationConfig(top_k=5),
                   GenerationConfig(top_p=0.9), GenerationConfig(top_k=4, top_p=0.5), GenerationConfig(top_p=1e-12)):
        tokens = choose_tokens(logits, config, u)
        rows = torch.cat([choose_tokens(logits[r : r + 1], config, u[r : r + 1]) for r in range(400)])
        assert torch.equal(tokens, rows), config
        assert torch.isfinite(logits.gather(1, tokens[:, None])).all()  # never a token of probability 0


# -- beam search against brute force ---------------------------------------------------------


@pytest.mark.parametrize("alpha, penalty", [(0.0, 1.0), (1.0, 1.0), (2.0, 1.3), (-0.5, 1.0)])
def test_beam_covering_all_hypotheses_equals_brute_force(alpha, penalty):
    tok = build_tokenizer("char", ["abc"])  # V = 5: [END], <unk>, a, b, c
    V, N = tok.vocab_size, 3
    model = tiny_model(V, seed=11, sharp=3.0)
    with torch.no_grad():
        model.decoder.bias[tok.end_id] = 1.0
    prompt = [tok.end_id] + tok.encode("b")

    def logp(ids, seen):
        logits = naive_logits(model, ids).double()
        for t in seen:
            logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
        return torch.log_softmax(logits, -1)

    hyps = []
    for length in range(N + 1):
        for body in itertools.product(range(1, V), repeat=length):
            tokens = list(body) + ([tok.end_id] if length < N else [])
            score, ids = 0.0, list(prompt)
            for t in tokens:
                score += float(logp(ids, set(ids[1:]))[t])
                ids.append(t)
            hyps.append((score / len(tokens) ** alpha, score, list(body)))
    hyps.sort(key=lambda h: -h[0])
    W = (V - 1) ** (N - 1) * V  # every candidate of the last step ranks within the beam
    config = GenerationConfig(num_beams=W, num_return_sequences=W, max_new_tokens=N, do_sample=False,
                              length_penalty=alpha, repetition_penalty=penalty)
    found = beam_search(model, tok, "b", config)
    assert [s.ids for s in found] == [h[2] for h in hyps[:W]]
    for s, (norm, score, _) in zip(found, hyps):
        assert s.score == pytest.approx(score, abs=1e-5) and s.normalized == pytest.approx(norm, abs=1e-5)
        assert s.stop == ("end" if len(s.ids) < N else "length")


def test_beam_finds_at_least_the_greedy_score(tok):
    model = tiny_model(tok.vocab_size, seed=8, sharp=5.0)
    greedy = generate(model, tok, "the", GenerationConfig(do_sample=False, max_new_tokens=15))[0]
    best = beam_search(model, tok, "the", GenerationConfig(num_beams=6, do_sample=False, max_new_tokens=15,
                                                           length_penalty=0.0, num_return_sequences=3))
    ids = [0] + tok.encode("the")
    greedy_score = 0.0
    for t in greedy.ids + ([0] if greedy.stop == "end" else []):
        greedy_score += float(torch.log_softmax(naive_logits(model, ids).double(), -1)[t])
        ids.append(t)
    assert best[0].score >= greedy_score - 1e-6
    assert [b.normalized for b in best] == sorted([b.normalized for b in best], reverse=True)


# -- text, incrementally --------------------------------------------------------------------


def _spm_tokenizer():
    pytest.importorskip("sentencepiece")
    text = ("Hello world, the cat sat on the mat. Ünïcödé 漢字 ok.\n  indented line\n" * 30)
    return build_tokenizer("spm", [text], vocab_size=285)


@pytest.mark.parametrize("kind", ["char", "word", "spm"])
def test_incremental_text_equals_decoding_the_whole(kind):
    tok = _spm_tokenizer() if kind == "spm" else build_tokenizer(kind, [TEXT + "Ünïcödé 漢字\n"])
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        prefix = torch.randint(1, tok.vocab_size, (trial % 4,), generator=gen).tolist()
        ids = torch.randint(1, tok.vocab_size, (25,), generator=gen).tolist()
        if trial % 5 == 0:
            ids[7] = tok.end_id  # a document break in the middle
        previous = prefix[-1] if prefix else tok.end_id
        decoder = TextDecoder(tok, previous)
        streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
        assert tok.decode([tok.end_id] + prefix) + streamed == tok.decode([tok.end_id] + prefix + ids)


def test_stream_samples_shows_each_sample_in_full(tok):
    model = tiny_model(tok.vocab_size, seed=5)
    with torch.no_grad():
        model.decoder.bias[tok.end_id] = 3.0
    config = GenerationConfig(num_return_sequences=5, max_new_tokens=30)
    samples = generate(model, tok, "a", config, generator=torch.Generator().manual_seed(3))
    shown = [""] * 5
    order = []
    for i, piece in stream_samples(model, tok, "a", config, generator=torch.Generator().manual_seed(3)):
        shown[i] += piece
        order.append(i)
    assert shown == [s.text for s in samples]
    assert order == sorted(order)  # one sample after another


def test_unknown_prompt_symbols(tok):
    model = tiny_model(tok.vocab_size)
    ctx = prime(model, tok, "the €at ß")
    assert ctx.unknown == ["€", "ß"] and ctx.ids.count(tok.unk_id) == 2
    with pytest.raises(ConfigError, match="lacks: '€', 'ß'"):
        prime(model, tok, "the €at ß", unknown="error")


def test_generators_are_per_sample():
    a = sample_generators(torch.Generator().manual_seed(0), 3)
    b = sample_generators(torch.Generator().manual_seed(0), 3)
    assert [torch.rand(1, generator=g).item() for g in a] == [torch.rand(1, generator=g).item() for g in b]


@pytest.mark.gpu
def test_cuda_matches_cpu(tok):
    model = tiny_model(tok.vocab_size, seed=6)
    config = GenerationConfig(do_sample=False, max_new_tokens=30)
    cpu = generate(model, tok, "the", config)[0]
    gpu = generate(model.cuda(), tok, "the", config)[0]
    assert gpu.ids == cpu.ids
    sampled = generate(model, tok, "the", GenerationConfig(top_p=0.9, num_return_sequences=4, max_new_tokens=20),
                       generator=torch.Generator().manual_seed(0))
    assert all(len(s.ids) <= 20 for s in sampled)
    beams = beam_search(model, tok, "the", GenerationConfig(num_beams=3, do_sample=False, max_new_tokens=10))
    assert beams[0].ids


# -- the command line ----------------------------------------------------------------------


def run_cli(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run([sys.executable, "-m", "lmgen", *args], capture_output=True, text=True, env=env,
                            timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_sample_streams_reproducibly(tiny_checkpoint):
    from lmgen import load
    from lmgen.sampling import config_from_flags

    first = run_cli("sample", str(tiny_checkpoint), "--prompt", "The ", "--num-samples", "3", "--seed", "4",
                  "--top-p", "0.95", "--max-new-tokens", "40")
    model, tok = load(tiny_checkpoint)
    # the CLI's default --precision auto: float16 step weights on this CPU
    expected = generate(model, tok, "The ", config_from_flags(top_p=0.95, num_samples=3, max_new_tokens=40,
                                                              precision="auto"),
                        generator=torch.Generator().manual_seed(4))
    assert first.stdout == "".join(f"{'' if i == 0 else chr(10)}--- sample {i + 1} of 3 ---\nThe {s.text}"
                                   for i, s in enumerate(expected)) + "\n"
    greedy = run_cli("sample", str(tiny_checkpoint), "--greedy", "--prompt", "def €", "--max-new-tokens", "30")
    assert "lacks '€'" in greedy.stderr and "<unk>" in greedy.stderr
    assert greedy.stdout.startswith("def €")
    beam = run_cli("sample", str(tiny_checkpoint), "--beam", "3", "--num-samples", "2", "--max-new-tokens", "20")
    assert beam.stdout.count("--- beam ") == 2 and "score -" in beam.stdout


def test_cli_errors_are_one_clear_line(tiny_checkpoint, tmp_path, capsys):
    from lmgen.cli import main

    cases = [
        (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--top-k", "0"], "--top-k must be a whole number >= 1, got 0"),
        (["--beam", "0"], "--beam must be a whole number in [1, 1024], got 0"),
        (["--greedy", "--top-p", "0.5"], "--top-p only apply to sampling"),
        (["--beam", "2", "--num-samples", "3"], "--num-samples must be <= --beam"),
        (["--strict-prompt", "--prompt", "€"], "lacks: '€'"),
    ]
    for flags, message in cases:
        assert main(["sample", str(tiny_checkpoint), *flags]) == 1
        err = capsys.readouterr().err
        assert err.startswith("lmgen: error: ") and message in err and "Traceback" not in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for path, message in ((tmp_path / "missing", "does not exist"), (foreign, "not an lmgen checkpoint")):
        assert main(["sample", str(path)]) == 1
        assert message in capsys.readouterr().err
    result = run_cli("sample", str(tmp_path / "missing"), check=False)
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr
