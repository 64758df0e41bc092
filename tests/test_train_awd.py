"""AWD-LSTM's training options in the loop: weight averaging, NT-ASGD, variable-length BPTT, and exact resume."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from lmgen.averaging import Averaging
from lmgen.checkpoint import load_checkpoint, load_train_state
from lmgen.config import ModelConfig, TrainConfig
from lmgen.data import StreamBatcher, WindowLengths
from lmgen.train import train

# Every regulariser of the model on, so that resume must restore their masks' generator too.
AWD_MODEL = ModelConfig(embed=8, hidden=16, layers=2, weight_drop=0.3, dropout_hidden=0.2, dropout_input=0.1,
                        dropout_output=0.2, dropout_embed=0.1)


def cfg(corpus, out, **kw):
    base = dict(corpus=str(corpus), batch=4, bptt=12, steps=12, eval_every=4, log_every=2, lr=5e-3, warmup=0,
                schedule="constant", out=str(out), seed=7, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def record_iterates(monkeypatch) -> list[dict]:
    """The raw parameters after every optimiser step of the runs that follow (float64)."""
    seen: list[dict] = []
    update = Averaging.update

    def spy(self):
        seen.append({name: p.detach().double().clone() for name, p in self.params.items()})
        update(self)

    monkeypatch.setattr(Averaging, "update", spy)
    return seen


def ema(iterates: list[dict], d: float) -> dict:
    n = len(iterates)
    return {k: sum((1 - d) * d ** (n - i) * iterates[i - 1][k] for i in range(1, n + 1)) / (1 - d**n)
            for k in iterates[0]}


def test_best_and_last_hold_the_average_and_train_state_the_raw_weights(tiny_corpus, tmp_path, monkeypatch):
    seen = record_iterates(monkeypatch)
    out = tmp_path / "run"
    train(cfg(tiny_corpus, out, average="ema:0.7", steps=12, lr=2e-2), AWD_MODEL, log=lambda m: None)
    assert len(seen) == 12
    last, state = weights(out / "last"), load_train_state(out / "last")
    for name, expected in ema(seen, 0.7).items():
        torch.testing.assert_close(last[name].double(), expected, rtol=0, atol=1e-5)
        assert torch.equal(state["average"]["weights"][name].double(), seen[-1][name])  # raw, exactly
        assert torch.equal(state["average"]["average"][name], last[name])
    assert state["average"]["count"] == 12 and state["average"]["started_at"] == 0
    # best/ holds the average of the evaluation that was best.
    best_step = json.loads((out / "best" / "config.json").read_text())["metrics"]["step"]
    best = weights(out / "best")
    for name, expected in ema(seen[:best_step], 0.7).items():
        torch.testing.assert_close(best[name].double(), expected, rtol=0, atol=1e-5)
    # What inference loads is the average.
    model = load_checkpoint(out / "last").model
    assert all(torch.equal(p, last[name]) for name, p in model.named_parameters())


def test_ntasgd_steps_plain_sgd_then_saves_the_polyak_mean_from_its_trigger(tiny_corpus, tmp_path, monkeypatch):
    seen = record_iterates(monkeypatch)
    out = tmp_path / "run"
    messages = []
    # A rate so large that validation soon gets worse: the trigger must fire within the run.
    train(cfg(tiny_corpus, out, optimizer="ntasgd", nonmono=1, lr=40.0, clip=0.25, eval_every=2, steps=24,
              eval_tokens=200), AWD_MODEL, log=messages.append)
    state = load_train_state(out / "last")
    fired = state["average"]["trigger"]["fired_at"]
    assert 0 < fired < 24 and state["average"]["started_at"] == fired
    assert any(f"step {fired}: validation stopped improving" in m for m in messages)
    assert "momentum_buffer" not in str(state["optimizer"]["state"])  # plain SGD, as awd-lstm-lm
    after = seen[fired:]  # the iterates after the trigger's evaluation, equally weighted
    assert state["average"]["count"] == len(after) == 24 - fired
    last = weights(out / "last")
    for name in last:
        torch.testing.assert_close(last[name].double(), sum(s[name] for s in after) / len(after), rtol=0, atol=1e-5)
        assert torch.equal(state["average"]["weights"][name].double(), seen[-1][name])
    # The trigger's logs are the validation losses before it fired, as metrics.jsonl has them.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if r["kind"] == "eval" and r["step"] <= fired]
    assert state["average"]["trigger"]["logs"] == vals


# AWD-LSTM's shape: layers of different sizes, the last one tied to the embedding ...
AWD_SHAPE = dataclasses.replace(AWD_MODEL, hidden=[16, 8], tie=True)
# ... and an adaptive softmax (which cannot be tied)
ADAPTIVE = dataclasses.replace(AWD_MODEL, hidden=[12, 16], adaptive_softmax="6,14")


@pytest.mark.parametrize("options, model", [
    (dict(ar=2.0, tar=1.0, bptt_jitter=4.0, average="ema:0.9"), AWD_MODEL),
    (dict(ar=2.0, tar=1.0, bptt_jitter=4.0, optimizer="ntasgd", nonmono=1, lr=40.0, clip=0.25, eval_every=2),
     AWD_MODEL),
    (dict(ar=2.0, tar=1.0, bptt_jitter=4.0, average="ema:0.9"), AWD_SHAPE),
    (dict(ar=2.0, tar=1.0, bptt_jitter=4.0, average="polyak"), ADAPTIVE),
], ids=["ema", "ntasgd", "sizes-tied", "adaptive-softmax"])
def test_resume_with_every_new_option_is_bit_identical(tiny_corpus, tmp_path, options, model):
    # 16 steps straight vs 10 steps then resumed to 16 (the SIGKILL version is in test_reliability).
    # A run stopped by its budget evaluates at its last step; stopping at one where the
    # straight run evaluates too keeps the validation history (and so NT-ASGD's trigger) the same.
    split = 10 if options.get("eval_every") == 2 else 8
    train(cfg(tiny_corpus, tmp_path / "straight", steps=16, **options), model, log=lambda m: None)
    train(cfg(tiny_corpus, tmp_path / "split", steps=split, **options), model, log=lambda m: None)
    train(cfg(tiny_corpus, tmp_path / "split", steps=16, resume=True, **options), model, log=lambda m: None)
    a, b = weights(tmp_path / "straight" / "last"), weights(tmp_path / "split" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = load_train_state(tmp_path / "straight" / "last"), load_train_state(tmp_path / "split" / "last")
    averaged = sa["average"]["weights"]  # parameters only: no buffers, one name per tied matrix
    assert averaged.keys() == sb["average"]["weights"].keys()
    assert all(torch.equal(averaged[k], sb["average"]["weights"][k]) for k in averaged)
    assert (sa["position"], sa["window"], sa["epoch"]) == (sb["position"], sb["window"], sb["epoch"])
    assert sa["average"]["trigger"] == sb["average"]["trigger"]
    if options.get("optimizer") == "ntasgd":
        assert 0 < sa["average"]["trigger"]["fired_at"] < split  # averaging, too, went on across the resume


def test_jittered_windows_walk_the_streams_by_position_and_scale_the_lr(tiny_corpus, tmp_path, monkeypatch):
    spans, lrs = [], []
    span, step = StreamBatcher.span, torch.optim.SGD.step

    def spy_span(self, start, length):
        x, y = span(self, start, length)
        if self.batch == 4:  # training's windows (validation reads its split with 16 streams)
            spans.append((start, length, x.shape[1], self.length))
        return x, y

    def spy_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(StreamBatcher, "span", spy_span)
    monkeypatch.setattr(torch.optim.SGD, "step", spy_step)
    result = train(cfg(tiny_corpus, tmp_path / "run", optimizer="sgd", lr=0.5, bptt_jitter=3.0, steps=0, epochs=2,
                       eval_every=1000), ModelConfig(embed=8, hidden=8), log=lambda m: None)
    assert result.stopped_by == "epochs"
    length = spans[0][3]
    starts = [s for s, *_ in spans]
    first_of_epoch = [i for i, s in enumerate(starts) if s == 0]
    assert first_of_epoch[:2] == [0, first_of_epoch[1]] and first_of_epoch[1] > 0
    epoch = spans[: first_of_epoch[1]]
    # Each window starts where the last one stopped; the epoch ends at the streams' end.
    assert all(b[0] == a[0] + a[2] for a, b in zip(epoch, epoch[1:]))
    assert epoch[-1][0] + epoch[-1][2] == length - 1
    drawn = [n for _, n, _, _ in spans]
    assert len(set(drawn)) > 3 and min(drawn) >= 5 and max(drawn) <= 24
    assert lrs == [0.5 * (n / 12) for n in drawn]  # the step's rate scales with its window's length


def test_jitter_draws_follow_awd_lstm_and_continue_from_a_saved_state():
    lengths = WindowLengths(bptt=70, jitter=5.0, seed=1)
    draws = [lengths.draw() for _ in range(20000)]
    short = sum(1 for n in draws if n < 52) / len(draws)  # the T/2 base, 35 ± 5
    assert 0.04 < short < 0.06
    full = [n for n in draws if n >= 52]
    assert abs(sum(full) / len(full) - 70) < 0.2 and min(draws) >= 5 and max(draws) <= 140
    saved = lengths.state_dict()
    ahead = [lengths.draw() for _ in range(10)]
    again = WindowLengths(bptt=70, jitter=5.0, seed=99)
    again.load_state_dict(saved)
    assert [again.draw() for _ in range(10)] == ahead
    assert WindowLengths(bptt=70, jitter=5.0, seed=1).draw() == draws[0]  # seeded
    assert WindowLengths(bptt=70).state_dict() == {} and WindowLengths(bptt=70).draw() == 70
