"""The training objective (lmgen.loss): AR and TAR against a hand computation, in a tiny model and in a run."""

import json
import math

import torch

import lmgen.train
from lmgen.config import ModelConfig, TrainConfig
from lmgen.loss import step_loss
from lmgen.model import RNNLM
from lmgen.train import train

TINY = dict(vocab_size=7, embed=5, hidden=4, layers=2)


def by_hand(logits, y, raw, dropped, ar, tar):
    """Cross-entropy, AR and TAR with Python loops in float64: [B, T, V] logits, [B, T, H] outputs."""
    B, T, _ = logits.shape
    H = raw.shape[2]
    logp = torch.log_softmax(logits.double(), dim=-1)
    ce = -sum(logp[b, t, y[b, t]].item() for b in range(B) for t in range(T)) / (B * T)
    squares = sum(dropped[b, t, h].item() ** 2 for b in range(B) for t in range(T) for h in range(H))
    jumps = sum((raw[b, t, h].item() - raw[b, t - 1, h].item()) ** 2
                for b in range(B) for t in range(1, T) for h in range(H))
    return ce, ar * squares / (B * T * H), tar * jumps / (B * (T - 1) * H)


def test_ar_and_tar_equal_a_hand_computation_without_dropout():
    # No dropout: raw == dropped == the output of the last recurrent layer, which the
    # fused module computes on its own (an oracle that does not use return_outputs).
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(**TINY))
    tokens = torch.randint(0, 7, (3, 9))
    x, y = tokens[:, :-1], tokens[:, 1:]
    loss, _, terms = step_loss(model, x, y, None, ar=2.0, tar=3.0)
    with torch.no_grad():
        out, _ = model.rnn(model.embedding(x))  # [B, T, H] of the last layer
        logits = model.decoder(out)
    ce, ar, tar = by_hand(logits, y, out, out, 2.0, 3.0)
    assert math.isclose(terms[0].item(), ce, rel_tol=1e-5)
    assert math.isclose(terms[1].item(), ar, rel_tol=1e-5) and ar > 0
    assert math.isclose(terms[2].item(), tar, rel_tol=1e-5) and tar > 0
    assert math.isclose(loss.item(), ce + ar + tar, rel_tol=1e-5)


def test_ar_takes_the_dropped_output_and_tar_the_raw_one():
    # Locked dropout before the decoder: AR's outputs are the dropped ones, TAR's not.
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(**TINY, dropout_output=0.5, dropout_hidden=0.3, weight_drop=0.4))
    model.train()
    tokens = torch.randint(0, 7, (3, 9))
    x, y = tokens[:, :-1], tokens[:, 1:]
    torch.manual_seed(1)
    loss, _, terms = step_loss(model, x, y, None, ar=2.0, tar=3.0)
    torch.manual_seed(1)  # the same masks again
    with torch.no_grad():
        logits, _, (raw, dropped) = model(x, None, return_outputs=True)
    assert not torch.equal(raw, dropped)
    # dropped is raw through one mask per sequence, scaled by 1/(1-p): zero or 2x, the same at every step
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * raw[kept])
    assert torch.equal(kept, kept[:, :1].expand_as(kept))
    ce, ar, tar = by_hand(logits, y, raw, dropped, 2.0, 3.0)
    assert math.isclose(loss.item(), ce + ar + tar, rel_tol=1e-5)
    torch.testing.assert_close(terms.double(), torch.tensor([ce, ar, tar], dtype=torch.float64), rtol=1e-5, atol=0)


def test_without_penalties_the_loss_is_the_plain_cross_entropy():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(**TINY))
    tokens = torch.randint(0, 7, (2, 6))
    loss, _, terms = step_loss(model, tokens[:, :-1], tokens[:, 1:], None)
    logits, _ = model(tokens[:, :-1])
    assert torch.equal(loss, torch.nn.functional.cross_entropy(logits.view(-1, 7), tokens[:, 1:].reshape(-1)))
    assert terms.shape == (1,)
    # A window of one token has no consecutive pair: TAR is zero, not NaN.
    loss, _, terms = step_loss(model, tokens[:, :1], tokens[:, 1:2], None, tar=1.0)
    assert terms[2].item() == 0.0 and math.isfinite(loss.item())


def test_the_training_step_backpropagates_the_penalised_loss_and_logs_the_cross_entropy(
        tiny_corpus, tmp_path, monkeypatch):
    checked = []

    def spy(model, x, y, state, *, ar, tar):
        # Recompute each step's loss independently from the same weights and dropout masks.
        before = torch.get_rng_state()
        loss, new_state, terms = step_loss(model, x, y, state, ar=ar, tar=tar)
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        with torch.no_grad():
            logits, _, (raw, dropped) = model(x, state, return_outputs=True)
        torch.set_rng_state(after)
        ce, a, t = by_hand(logits, y, raw, dropped, 0.5, 0.25)
        checked.append((ar, tar, loss.item(), ce + a + t, terms[0].item(), ce))
        return loss, new_state, terms

    monkeypatch.setattr(lmgen.train, "step_loss", spy)
    cfg = TrainConfig(corpus=str(tiny_corpus), batch=2, bptt=6, steps=4, eval_every=4, log_every=1, ar=0.5,
                      tar=0.25, out=str(tmp_path / "run"), progress=False, seed=2)
    train(cfg, ModelConfig(embed=4, hidden=6, layers=2, dropout_output=0.4, dropout_hidden=0.2), log=lambda m: None)
    assert len(checked) == 4
    for ar, tar, loss, expected, ce, expected_ce in checked:
        assert (ar, tar) == (0.5, 0.25)
        assert math.isclose(loss, expected, rel_tol=1e-5) and math.isclose(ce, expected_ce, rel_tol=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    # The logged training loss is the cross-entropy; the penalties have their own columns.
    assert [r["train_loss"] for r in train_rows] == [c[4] for c in checked]
    assert all(r["ar_penalty"] > 0 and r["tar_penalty"] > 0 for r in train_rows)
