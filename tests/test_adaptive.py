"""The continuous cache and dynamic evaluation (lmgen/adaptive/) against independent computations.

Oracles: the cache's probabilities equal a naive sum over the stored states; lambda = 0 and a
zero learning rate give exactly the plain model; no leak (segment k's loss equals the loss
under weights updated on segments < k only, from a loop that copies the weights before each
update; and changing later text never changes it); tuning never reads the test split; the
REPL's :adapt raises a held-back sentence's log-probability and :adapt reset restores the
weights bit for bit.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmgen.adaptive import (
    Adapter,
    AdaptiveRequest,
    CacheConfig,
    DynamicConfig,
    LiveAdaptation,
    NeuralCache,
    evaluate_adaptive,
    gradient_statistics,
    score_pass,
    tune_adaptive,
)
from lmgen.config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.evaluate import evaluate_checkpoint, evaluate_tokens, stream_layout
from lmgen.generation import GenerationConfig
from lmgen.model import build_model
from lmgen.sampling import Session, beam_search, generate, prime
from lmgen.tokenizer import build_tokenizer

V = 13


def tiny_model(cell: str = "lstm", tie: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    embed = 8 if tie else 6
    model = build_model(ModelConfig(cell=cell, vocab_size=V, embed=embed, hidden=8, layers=2, tie=tie))
    with torch.no_grad():
        model.decoder.bias.normal_(0, 0.5)
    return model.eval()


def text(n: int, seed: int = 1) -> np.ndarray:
    """A text with repetitions (a cache and adaptation have something to find), [END] = 0 included."""
    rng = np.random.default_rng(seed)
    phrases = [rng.integers(1, V, size=rng.integers(3, 7)) for _ in range(5)]
    out: list[int] = []
    while len(out) < n:
        out += list(phrases[rng.integers(0, 5)]) + ([0] if rng.random() < 0.2 else [])
    return np.array(out[:n])


@pytest.fixture
def stats_for():
    """MS_g of a model on another text of the same kind (as training text would be)."""
    def get(model, segment):
        return gradient_statistics(model, text(3000, seed=7), DynamicConfig(segment=segment, stats_tokens=2000))
    return get


@pytest.mark.parametrize("module", ["cache", "dynamic"])
def test_module_doctests(module):
    assert doctest.testmod(importlib.import_module("lmgen.adaptive." + module)).failed == 0


# --------------------------------------------------------------------------- the cache


def naive_cache_log_prob(h: np.ndarray, y: np.ndarray, t: int, size: int, theta: float) -> float:
    """log p_cache(y_t | h_t) of one stream, summing exp(theta h_t . h_i) over i in [t - N, t - 1] one by one."""
    total = hit = 0.0
    for i in range(max(0, t - size), t):
        w = math.exp(theta * float(np.dot(h[t].astype(np.float64), h[i].astype(np.float64))))
        total += w
        hit += w if y[i] == y[t] else 0.0
    if total == 0.0:
        return math.nan
    return math.log(hit / total) if hit else -math.inf


@pytest.mark.parametrize("batch", [1, 2])
def test_cache_probabilities_equal_a_naive_sum_over_the_stored_states(batch):
    model = tiny_model()
    tokens = text(300)
    size, thetas = 17, (0.0, 0.7, 2.5)
    result = score_pass(model, tokens, batch=batch, bptt=40, cache_size=size, thetas=thetas, lambdas=(0.25,),
                        record=True)
    inputs, targets, valid = stream_layout(tokens, batch)
    got = result.per_token["cache"].reshape(len(thetas), -1)
    k = 0
    for b in range(inputs.shape[0]):
        with torch.no_grad():
            _, _, (h, _) = model(torch.from_numpy(inputs[b : b + 1]), None, return_outputs=True)
        h, y = h[0].numpy(), targets[b]
        for t in range(int(valid[b].sum())):
            for j, theta in enumerate(thetas):
                want = naive_cache_log_prob(h, y, t, size, theta)
                if math.isnan(want) or want == -math.inf:
                    assert got[j, k] == want or (math.isnan(want) and math.isnan(got[j, k]))
                else:
                    assert got[j, k] == pytest.approx(want, rel=1e-6, abs=1e-9)
            k += 1
    # the mixture, summed: the model's probability where the cache is empty
    p_model = np.exp(result.per_token["model"])
    p_cache = np.exp(np.nan_to_num(got[1], nan=0.0))
    mixed = np.where(np.isnan(got[1]), p_model, 0.75 * p_model + 0.25 * p_cache)
    assert float(result.nll_grid[1, 0]) == pytest.approx(-np.log(mixed).sum(), rel=1e-9)


def test_the_generation_distribution_equals_a_naive_one_over_the_ring():
    torch.manual_seed(3)
    cache = NeuralCache(size=5, batch=2, hidden=4)
    pairs = [(torch.randn(2, 4), torch.randint(0, 7, (2,))) for _ in range(8)]  # 8 > 5: the ring wraps
    for h, y in pairs:
        cache.push(h[:, None], y[:, None])
    query, theta = torch.randn(2, 4), 0.9
    got = cache.log_probs(query, theta, vocab=7).exp()
    for b in range(2):
        weights = np.zeros(7)
        for h, y in pairs[-5:]:  # the last N pairs only
            weights[int(y[b])] += math.exp(theta * float(query[b].double() @ h[b].double()))
        np.testing.assert_allclose(got[b].numpy(), weights / weights.sum(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 3])
def test_lambda_zero_is_exactly_the_plain_model(batch):
    model = tiny_model("gru")
    tokens = text(400)
    plain = evaluate_tokens(model, tokens, batch=batch, bptt=64)
    cached = evaluate_adaptive(model, tokens, cache=CacheConfig(50, theta=0.5, lam=0.0), batch=batch, bptt=64)
    assert cached.nll == plain.nll and cached.tokens == plain.tokens == 400


def test_the_cache_finds_repetition():
    model = tiny_model()
    tokens = text(600)
    plain = evaluate_tokens(model, tokens, batch=1).nll
    tuning = tune_adaptive(model, tokens, cache=CacheConfig(100))
    assert tuning.choices["cache"].nll < plain - 50  # a random model, a repetitive text: a large gain


def test_cache_config_names_the_flag():
    with pytest.raises(ConfigError, match="--cache-lambda must be in"):
        CacheConfig(10, lam=1.5)
    with pytest.raises(ConfigError, match="--cache-theta must be"):
        CacheConfig(10, theta=float("nan"))


# --------------------------------------------------------------------------- dynamic evaluation


@pytest.mark.parametrize("batch", [1, 3])
def test_learning_rate_zero_is_exactly_the_plain_model(batch, stats_for):
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    tokens = text(500)
    plain = evaluate_tokens(model, tokens, batch=batch, bptt=7)
    stats = stats_for(model, 7)
    dynamic = evaluate_adaptive(model, tokens, dynamic=DynamicConfig(lr=0.0, segment=7), stats=stats, batch=batch)
    assert dynamic.nll == plain.nll
    both = evaluate_adaptive(model, tokens, cache=CacheConfig(30, lam=0.0), dynamic=DynamicConfig(lr=0.0, segment=7),
                             stats=stats, batch=batch)
    assert both.nll == plain.nll
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model passed in: untouched


def naive_dynamic(model, stats, config, tokens, batch, leaky=False):
    """Per-segment losses from an independent loop: the update rule written out per weight from the
    paper, and each segment scored by a fresh copy of the weights as they were before its update
    (``leaky``: after it, the mistake the oracle must catch)."""
    inputs, targets, valid = stream_layout(np.asarray(tokens), batch)
    weights = copy.deepcopy(model)
    theta0 = [p.detach().clone() for p in weights.parameters()]
    rms = stats.rms
    mean = sum(float(r.double().sum()) for r in rms) / sum(r.numel() for r in rms)
    state, losses = None, []
    T = config.segment
    for t0 in range(0, inputs.shape[1], T):
        x, y = torch.from_numpy(inputs[:, t0 : t0 + T]), torch.from_numpy(targets[:, t0 : t0 + T])
        mask = torch.from_numpy(valid[:, t0 : t0 + T])
        logits, new_state = weights(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")[mask.flatten()].mean()
        grads = torch.autograd.grad(loss, list(weights.parameters()))
        updated = copy.deepcopy(weights)
        with torch.no_grad():
            for p, p0, g, r in zip(updated.parameters(), theta0, grads, rms):
                pull = (config.decay * r / mean).clamp(max=1.0)
                p.copy_(p - config.lr * g / (r + config.eps) + pull * (p0 - p))
        scorer = updated if leaky else copy.deepcopy(weights)  # the copy made before this segment's update
        with torch.enable_grad():
            out, _ = scorer(x, state)
        logp = torch.log_softmax(out.detach().double(), -1).gather(-1, y[..., None])[..., 0]
        losses.append(-float(logp[mask].sum()))
        weights, state = updated, tuple(s.detach() for s in new_state) if isinstance(new_state, tuple) \
            else new_state.detach()
    return np.array(losses)


def segment_losses(per_token: np.ndarray, tokens_len: int, batch: int, T: int) -> np.ndarray:
    """Sum per-target log-probs (text order) into the losses of the segment columns."""
    inputs, _, valid = stream_layout(np.zeros(tokens_len, dtype=np.int64), batch)
    column = np.broadcast_to(np.arange(inputs.shape[1]) // T, inputs.shape)[valid]
    return np.array([-per_token[column == k].sum() for k in range(column.max() + 1)])


@pytest.mark.parametrize("cell, tie, batch", [("lstm", False, 1), ("gru", True, 1), ("lstm", False, 2)])
def test_no_leak_each_segment_is_scored_before_the_model_learns_it(cell, tie, batch, stats_for):
    model = tiny_model(cell, tie)
    tokens = text(260)
    config = DynamicConfig(lr=1e-3, decay=0.05, segment=6)
    stats = stats_for(model, 6)
    adapter = Adapter(model, stats, config)
    assert (adapter.lazy is not None) == (not tie)  # an untied embedding takes the lazy path
    got = segment_losses(score_pass(model, tokens, batch=batch, adapter=adapter, record=True).per_token["model"],
                         len(tokens), batch, 6)
    want = naive_dynamic(model, stats, config, tokens, batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    leaky = naive_dynamic(model, stats, config, tokens, batch, leaky=True)
    assert np.abs(got - leaky)[1:].max() > 1e-3  # the oracle can tell: learning first would change the figures
    plain = segment_losses(score_pass(model, tokens, batch=batch, bptt=6, record=True).per_token["model"],
                           len(tokens), batch, 6)
    assert got.sum() < plain.sum()  # and it helps on a repetitive text


def test_later_text_never_changes_earlier_scores(stats_for):
    model = tiny_model()
    config = DynamicConfig(lr=1e-3, segment=5)
    stats = stats_for(model, 5)
    a, b = text(200), text(200)
    b[120:] = np.random.default_rng(9).integers(0, V, size=80)
    pa = score_pass(model, a, adapter=Adapter(model, stats, config), cache_size=30, thetas=(0.5,), lambdas=(0.2,),
                    record=True).per_token
    pb = score_pass(model, b, adapter=Adapter(model, stats, config), cache_size=30, thetas=(0.5,), lambdas=(0.2,),
                    record=True).per_token
    for key in ("model", "cache"):
        assert np.array_equal(pa[key][..., :120], pb[key][..., :120], equal_nan=True)
        assert not np.array_equal(pa[key][..., 120:], pb[key][..., 120:], equal_nan=True)


def test_lazy_embedding_rows_equal_the_dense_update(stats_for, monkeypatch):
    model = tiny_model()
    stats = stats_for(model, 5)
    config = DynamicConfig(lr=1e-3, decay=0.1, segment=5)
    lazy = Adapter(model, stats, config)
    monkeypatch.setattr(Adapter, "_lazy_embedding", lambda self: None)
    dense = Adapter(model, stats, config)
    tokens = text(120)
    score_pass(model, tokens, adapter=lazy)
    score_pass(model, tokens, adapter=dense)
    lazy.sync()
    for p, q in zip(lazy.model.parameters(), dense.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    lazy.reset()
    assert all(torch.equal(p, q) for p, q in zip(lazy.model.parameters(), model.parameters()))


def test_dynamic_config_names_the_flag():
    with pytest.raises(ConfigError, match="--dyn-segment must be a whole number >= 1"):
        DynamicConfig(segment=0)
    with pytest.raises(ConfigError, match="--dyn-lr must be a number >= 0"):
        DynamicConfig(lr=-1.0)


# --------------------------------------------------------------------------- tuning


def test_tuning_picks_from_the_grid_and_combines(stats_for):
    model = tiny_model()
    stats = stats_for(model, 5)
    tokens = text(300)
    tuning = tune_adaptive(model, tokens, cache=CacheConfig(40), dynamic=DynamicConfig(segment=5, lr=1e-3),
                           stats=stats, fixed={"decay"}, source="valid")
    assert set(tuning.choices) == {"cache", "dynamic", "cache+dynamic"}
    assert tuning.tuned == ["theta", "lambda", "lr"]
    assert all(c.dynamic.decay == 0.02 for m, c in tuning.choices.items() if c.dynamic)  # held as given
    both = tuning.choices["cache+dynamic"]
    assert both.nll <= min(tuning.choices["dynamic"].nll, tuning.choices["cache"].nll) + 1e-9
    best_seen = min(row["perplexity"] for row in tuning.tried)
    assert both.perplexity == pytest.approx(best_seen)


def test_tuning_never_reads_the_test_split(tiny_checkpoint, monkeypatch):
    """The test split raises whenever it is read while values are being chosen; the report still comes."""
    import lmgen.adaptive.plan as plan
    import lmgen.data
    from lmgen.corpora.corpus import Corpus

    tuning = {"now": False, "test reads": 0}
    real_pieces, real_encode, real_plan = Corpus.pieces, lmgen.data.encode_split, plan.plan_methods

    def guard(split):
        if split == "test":
            if tuning["now"]:
                raise AssertionError("the test split was read while tuning")
            tuning["test reads"] += 1

    def pieces(self, split):
        guard(split)
        return real_pieces(self, split)

    def encode_split(corpus, tokenizer, split, **kw):
        guard(split)
        return real_encode(corpus, tokenizer, split, **kw)

    def plan_methods(*args, **kw):
        tuning["now"] = True
        try:
            return real_plan(*args, **kw)
        finally:
            tuning["now"] = False

    monkeypatch.setattr(Corpus, "pieces", pieces)
    monkeypatch.setattr(lmgen.data, "encode_split", encode_split)
    monkeypatch.setattr(plan, "plan_methods", plan_methods)
    monkeypatch.setattr("lmgen.adaptive.plan_methods", plan_methods, raising=False)
    request = AdaptiveRequest(cache=CacheConfig(30), dynamic=DynamicConfig(segment=10, stats_tokens=500),
                              tune_on="valid", fixed={"decay"})
    report = evaluate_checkpoint(str(tiny_checkpoint), split="test", batch=1, adaptive=request)
    assert tuning["test reads"] > 0  # read, but only after
    labels = [r.extra.get("method") for r in report.results]
    assert labels == [None, "cache", "dynamic", "cache+dynamic"]
    sources = report.results[3].extra["values_from"]
    assert sources["decay"] == "given" and sources["theta"].startswith("tiny.txt valid (")
    assert "tuned on tiny.txt valid" in report.format() and report.tuning["tried"]
    with pytest.raises(ConfigError, match="--tune-on test would report"):
        AdaptiveRequest(cache=CacheConfig(30), tune_on="test")


# --------------------------------------------------------------------------- generation


def char_model():
    tok = build_tokenizer("char", ["abcdefgh ."])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, embed=8, hidden=16, layers=2)).eval()
    return model, tok


@pytest.mark.parametrize("greedy", [True, False])
def test_a_cache_with_lambda_zero_samples_byte_for_byte_the_plain_text(greedy):
    model, tok = char_model()
    config = GenerationConfig(max_new_tokens=60, do_sample=not greedy, num_return_sequences=2)
    plain = generate(model, tok, prime(model, tok, "abc abc"), config, generator=torch.Generator().manual_seed(4))
    cached = generate(model, tok, prime(model, tok, "abc abc", cache=CacheConfig(20, lam=0.0)), config,
                      generator=torch.Generator().manual_seed(4))
    assert [s.text for s in plain] == [s.text for s in cached]


def test_sampling_follows_the_cache_mixture_and_the_context_keeps_it():
    model, tok = char_model()
    ctx = prime(model, tok, "abc abc abc", cache=CacheConfig(50, theta=1.0, lam=0.9))
    rows = generate(model, tok, ctx, GenerationConfig(max_new_tokens=40, do_sample=False))
    assert ctx.cache.seen == ctx.fed == len(ctx.ids) - 1 and ctx.cache.ring.count == ctx.fed - 1
    assert set(rows[0].text) <= set("abc ")  # at lambda 0.9 the cache's tokens dominate
    # the mixture the sampler saw equals the cache distribution over the text's own states, computed naively
    ctx2 = prime(model, tok, "abc abc abc", cache=CacheConfig(50, theta=1.0, lam=0.9))
    logits = ctx2.head[2]  # [V]: the model's next-token logits after the text
    with torch.no_grad():
        _, _, (h, _) = model(torch.tensor([ctx2.ids]), None, return_outputs=True)
    h, ids = h[0].double(), ctx2.ids
    w = torch.zeros(tok.vocab_size, dtype=torch.float64)
    for i in range(len(ids) - 1):
        w[ids[i + 1]] += math.exp(float(h[-1] @ h[i]))
    want = torch.log(0.1 * torch.softmax(logits.double(), -1) + 0.9 * w / w.sum())
    torch.testing.assert_close(ctx2.cache.mix(logits[None])[0], want, rtol=1e-6, atol=1e-9)
    with pytest.raises(ConfigError, match="not with --beam"):
        beam_search(model, tok, ctx2, GenerationConfig(num_beams=2, do_sample=False))


def test_session_adapt_reset_restores_the_weights_bit_for_bit():
    model, tok = char_model()
    original = copy.deepcopy(model.state_dict())
    stats = gradient_statistics(model, np.array(tok.encode("abc abd abe " * 60)), DynamicConfig(stats_tokens=500))
    session = Session(model, tok, GenerationConfig(max_new_tokens=5, do_sample=False),
                      adapt=LiveAdaptation(model, DynamicConfig(lr=3e-3), stats))
    score = session.handle(":score hag hag.")
    assert session.handle(":adapt on").startswith("adapt on")
    "".join(session.generate("hag hag hag. hag hag hag."))
    assert session.adaptation.steps > 0 and "adapt on" in session.show()
    changed = session.model.state_dict()
    assert any(not torch.equal(changed[k], v) for k, v in original.items())
    assert float(session.handle(":score hag hag.").split()[3]) > float(score.split()[3])
    session.handle(":adapt reset")
    assert all(torch.equal(session.model.state_dict()[k], v) for k, v in original.items())
    assert session.handle(":score hag hag.") == score
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())  # never touched
    with pytest.raises(ConfigError, match=":adapt takes on, off or reset"):
        session.handle(":adapt maybe")


def test_a_session_keeps_a_cache_of_its_text():
    model, tok = char_model()
    session = Session(model, tok, GenerationConfig(max_new_tokens=10, do_sample=False), cache=CacheConfig(20))
    "".join(session.generate("abc abc"))
    "".join(session.generate(None))  # an empty line continues: the same text, the same cache
    ctx = session.context
    assert ctx.cache is not None and ctx.cache.seen == ctx.fed and "cache N=20" in session.show()
    session.handle(":beam 2")
    with pytest.raises(ConfigError, match="not with :beam"):
        "".join(session.generate("abc"))


def test_the_repl_cache_command_sets_the_cache_of_the_next_text():
    model, tok = char_model()
    session = Session(model, tok, GenerationConfig(max_new_tokens=6, do_sample=False))
    assert "cache" not in session.show()
    assert "N=30" in session.handle(":cache 30 0.5")
    assert (session.cache.size, session.cache.theta, session.cache.lam) == (30, 0.5, CacheConfig(1).lam)
    "".join(session.generate("abc abc"))
    assert session.context.cache is not None and session.context.cache.seen == session.context.fed
    session.handle(":cache off")
    "".join(session.generate("abc"))
    assert session.context.cache is None
    for bad in (":cache", ":cache x", ":cache 0", ":cache 5 1 2 3", ":cache 5 0.3 7"):
        with pytest.raises(ConfigError, match="cache"):
            session.handle(bad)


# --------------------------------------------------------------------------- command line and REPL


def lmgen(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "lmgen", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmgen {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def test_eval_and_sample_flags(tiny_checkpoint):
    out = lmgen("eval", tiny_checkpoint, "--exact", "--cache", 40, "--dynamic", "--dyn-stats-tokens", 500,
                "--dyn-segment", 10, "--tune-on", "valid", "--cache-lambda", 0.1, "--json").stdout
    report = json.loads(out)
    methods = [r["extra"].get("method") for r in report["results"]]
    assert methods == [None, "cache", "dynamic", "cache+dynamic"]
    both = report["results"][3]["extra"]
    assert both["values_from"]["lambda"] == "given" and "valid" in both["values_from"]["lr"]
    assert both["cache"]["lambda"] == 0.1 and report["tuning"]["chosen"]["cache+dynamic"]["perplexity"] > 1
    proc = lmgen("sample", tiny_checkpoint, "--prompt", "The cat", "--cache", 30, "--adapt", "--dyn-stats-tokens",
                 500, "--max-new-tokens", 20, "--seed", 3)
    assert proc.stdout.startswith("The cat") and "adapted to the prompt" in proc.stderr
    bad = lmgen("eval", tiny_checkpoint, "--cache-theta", 0.5, check=False)
    assert bad.returncode == 1 and "add --cache N" in bad.stderr and "Traceback" not in bad.stderr
    bad = lmgen("sample", tiny_checkpoint, "--cache", 30, "--beam", 3, check=False)
    assert bad.returncode == 1 and "not with --beam" in bad.stderr


def test_repl_adapt_raises_a_held_back_sentence_and_reset_restores_it(tiny_checkpoint, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", LMGEN_CACHE=str(tmp_path),
               HOME=str(tmp_path), TERM="dumb")
    child = pexpect.spawn(sys.executable, ["-m", "lmgen", "repl", str(tiny_checkpoint), "--seed", "1", "--greedy",
                                           "--max-new-tokens", "5", "--dyn-stats-tokens", "500"],
                          env=env, encoding="utf-8", timeout=120, dimensions=(40, 200))
    prompt = "lmgen> "
    held_back = ":score the zebra ate a plum."

    def score() -> str:
        child.sendline(held_back)
        child.expect(r"log p = (-?[\d.]+) nats")
        value = child.match.group(1)
        child.expect_exact(prompt)
        return value

    try:
        child.expect_exact(prompt)
        before = score()
        child.sendline(":adapt on")
        child.expect_exact("adapt on (0 steps taken")
        child.expect_exact(prompt)
        child.sendline("the zebra ate the plum. the zebra ate the pear. a zebra ate the fig. the zebra sat.")
        child.expect_exact(prompt)
        child.sendline(":show")
        child.expect(r"adapt on \((\d+) steps taken")
        assert int(child.match.group(1)) > 0
        child.expect_exact(prompt)
        after = score()
        assert float(after) > float(before)
        child.sendline(":adapt reset")
        child.expect_exact("the trained weights again")
        child.expect_exact(prompt)
        assert score() == before  # the same weights, bit for bit: the same figure to the last digit
        child.sendline(":quit")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
    assert re.fullmatch(r"-?\d+\.\d{4}", before)
