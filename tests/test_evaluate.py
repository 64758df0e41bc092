"""The evaluator against independent token-by-token computations, and `lmgen eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmgen.config import ModelConfig, TrainConfig
from lmgen.evaluate import evaluate_checkpoint, evaluate_tokens, stream_loss
from lmgen.model import build_model

V = 11


def tiny_model(cell: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell=cell, vocab_size=V, embed=6, hidden=8, layers=2, window=3))
    with torch.no_grad():  # a non-zero bias so that nothing is accidentally symmetric
        model.decoder.bias.normal_(0, 0.5)
    return model.eval()


def token_by_token(model: torch.nn.Module, tokens: np.ndarray, end_id: int = 0) -> np.ndarray:
    """log p(t_i | [END], t_0..t_{i-1}) for every i: one token per call, state carried by hand."""
    state, prev, out = None, end_id, []
    with torch.no_grad():
        for t in tokens:
            logits, state = model(torch.tensor([[prev]]), state)
            out.append(float(torch.log_softmax(logits[0, -1].double(), -1)[int(t)]))
            prev = int(t)
    return np.array(out)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "window"])
def test_exact_mode_equals_token_by_token(cell):
    model = tiny_model(cell)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, V, size=157)
    logp = token_by_token(model, tokens)
    nll, n, chars = -logp.sum(), len(tokens), 400
    result = evaluate_tokens(model, tokens, batch=1, bptt=10, chars=chars, num_bytes=450)
    assert result.tokens == n and result.exact
    assert result.nll == pytest.approx(nll, rel=1e-6, abs=1e-5)
    assert result.loss == pytest.approx(nll / n, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert result.bits_per_token == pytest.approx(nll / n / math.log(2), abs=1e-5)
    assert result.bits_per_char == pytest.approx(nll / math.log(2) / chars, abs=1e-5)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / 450, abs=1e-5)
    assert result.end_tokens == int((tokens == 0).sum()) and result.unknown == int((tokens == 1).sum())


def test_batched_mode_is_exact_per_stream_and_scores_every_token():
    """B streams of ceil(N/B) targets, each run from the zero state: nothing is dropped."""
    model = tiny_model("lstm")
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, V, size=4 * 64 + 3)  # N not a multiple of B: the last stream is short
    B = 4
    L = -(-len(tokens) // B)
    seq = np.concatenate([[0], tokens])
    expected = 0.0
    for b in range(B):
        stream = seq[b * L : min((b + 1) * L, len(tokens)) + 1]  # stream[0] is context only
        expected -= token_by_token(model, stream[1:], end_id=int(stream[0])).sum()
    result = evaluate_tokens(model, tokens, batch=B, bptt=16)
    assert result.batch == B and result.tokens == len(tokens)
    assert result.nll == pytest.approx(expected, rel=1e-6)


def test_uniform_model_has_perplexity_v():
    model = tiny_model("lstm")
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    tokens = np.random.default_rng(3).integers(0, V, size=300)
    for batch in (1, 3):
        result = evaluate_tokens(model, tokens, batch=batch, bptt=32)
        assert result.perplexity == pytest.approx(V, rel=1e-9)
        assert result.bits_per_token == pytest.approx(math.log2(V), rel=1e-9)


def test_empty_and_single_token_texts():
    model = tiny_model("gru")
    assert evaluate_tokens(model, np.array([], dtype=np.int64)).tokens == 0
    result = evaluate_tokens(model, np.array([0]), batch=8)
    assert result.tokens == 1 and result.end_tokens == 1 and result.batch == 1
    assert result.nll == pytest.approx(-token_by_token(model, np.array([0]))[0], rel=1e-6)


def test_batched_approaches_exact_on_a_trained_model(tiny_checkpoint, tiny_corpus):
    from lmgen import corpora, load
    from lmgen.data import encode_split

    model, tok = load(tiny_checkpoint)
    tokens = encode_split(corpora.resolve(str(tiny_corpus)), tok, "train").tokens[:4000]
    exact = evaluate_tokens(model, tokens, batch=1).loss
    gaps = [abs(evaluate_tokens(model, tokens, batch=b).loss - exact) for b in (16, 4, 2)]
    assert gaps[0] < 0.05 * exact  # batched is close to exact ...
    assert gaps[2] <= gaps[0] + 1e-9  # ... and closer with fewer (longer) streams


def test_stream_loss_counts_what_the_batcher_keeps():
    model = tiny_model("lstm")
    tokens = np.random.default_rng(4).integers(0, V, size=203)
    nll, count = stream_loss(model, tokens, batch=4, bptt=16, amp=False)
    assert count == 4 * (203 // 4 - 1)
    assert nll / count == pytest.approx(evaluate_tokens(model, tokens, batch=4).loss, rel=0.1)


# --------------------------------------------------------------------------- checkpoints and CLI


def test_eval_cli_json_matches_the_library(tiny_checkpoint, tiny_corpus, capsys):
    from lmgen import corpora, load
    from lmgen.cli import main
    from lmgen.data import encode_split

    assert main(["eval", str(tiny_checkpoint), "--exact", "--json", "--baseline", "ngram:3"]) == 0
    report = json.loads(capsys.readouterr().out)
    model, tok = load(tiny_checkpoint)
    corpus = corpora.resolve(str(tiny_corpus))
    tokens = encode_split(corpus, tok, "test").tokens
    direct = evaluate_tokens(model, tokens, batch=1)
    lstm, ngram = report["results"]
    assert lstm["tokens"] == len(tokens) == ngram["tokens"]
    assert lstm["exact"] and lstm["nll"] == pytest.approx(direct.nll, rel=1e-9)
    assert lstm["chars"] == corpus.num_chars("test") and lstm["end_tokens"] == 1
    assert ngram["label"] == "3-gram KN" and ngram["perplexity"] > 1
    assert main(["eval", str(tiny_checkpoint), "--split", "valid"]) == 0
    text = capsys.readouterr().out
    assert "[END] (counted)" in text and "perplexity" in text and "bits/char" in text


def test_eval_text_file_with_unknown_symbols(tiny_checkpoint, tmp_path, capsys):
    from lmgen.cli import main

    path = tmp_path / "odd.txt"
    path.write_text("Zebra \u00fcber \u2603 the mat.\n", encoding="utf-8")
    report = evaluate_checkpoint(str(tiny_checkpoint), split=str(path), exact=True)
    result = report.results[0]
    assert result.tokens == len(path.read_text()) + 1  # char model: every character, then [END]
    assert result.unknown >= 3 and "\u2603" in report.unknown_symbols
    assert math.isfinite(result.perplexity)
    assert main(["eval", str(tiny_checkpoint), "--split", str(path)]) == 0
    assert "<unk>" in capsys.readouterr().out


def test_eval_errors_are_user_errors(tiny_checkpoint, tmp_path, capsys):
    from lmgen.cli import main

    assert main(["eval", str(tmp_path / "nothing")]) == 1
    assert main(["eval", str(tiny_checkpoint), "--baseline", "kn"]) == 1
    assert main(["eval", str(tiny_checkpoint), "--split", str(tmp_path / "missing.txt")]) == 1
    assert capsys.readouterr().err.count("lmgen: error:") == 3


def test_window_cell_trains_saves_and_evaluates(tiny_corpus, tmp_path):
    from lmgen import corpora, load
    from lmgen.data import encode_split
    from lmgen.train import train

    out = tmp_path / "win"
    cfg = TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=16, steps=30, eval_every=15, lr=1e-2, warmup=0,
                      progress=False, out=str(out), seed=0)
    result = train(cfg, ModelConfig(cell="window", window=4, embed=8, hidden=16), log=lambda m: None)
    model, tok = load(out)
    assert type(model).__name__ == "WindowLM" and model.config.window == 4
    tokens = encode_split(corpora.resolve(str(tiny_corpus)), tok, "valid").tokens
    exact = evaluate_tokens(model, tokens, batch=1)
    assert exact.loss == pytest.approx(-token_by_token(model, tokens).mean(), rel=1e-6)
    assert exact.loss < math.log(tok.vocab_size) and result.val_loss is not None


def test_early_stopping_when_validation_stops_improving(tiny_corpus, tmp_path):
    """A learning rate too small to move float32 weights: the validation loss cannot improve."""
    from lmgen.train import train

    cfg = TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=16, steps=100, eval_every=5, lr=1e-15, warmup=0,
                      patience=2, progress=False, out=str(tmp_path / "run"), seed=0)
    result = train(cfg, ModelConfig(embed=8, hidden=16), log=lambda m: None)
    assert result.stopped_by == "early-stopping"
    assert result.steps == 15  # best at step 5, no better at 10 and 15
