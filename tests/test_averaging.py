"""Weight averaging (lmgen.averaging): Polyak, EMA and NT-ASGD's trigger, against hand computations."""

import io
import random

import pytest
import torch

from lmgen.averaging import Averaging, NonMonotoneTrigger, load_raw_weights, make_averaging
from lmgen.config import TrainConfig


def paper_rule(logs: list[float], v: float, n: int) -> bool:
    """Merity et al. 2018, Algorithm 1, written with the paper's indices: with t = len(logs),
    switch when t > n and v > min_{i in {0, ..., t-n-1}} logs[i] (the paper names the index l)."""
    t = len(logs)
    return t > n and v > min(logs[i] for i in range(0, t - n))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_the_trigger_follows_the_papers_rule_on_scripted_validation_losses(n):
    rng = random.Random(n)
    for _ in range(200):
        losses = [5.0 - 0.1 * i + rng.uniform(-0.3, 0.3) for i in range(15)]
        trigger, logs, expected = NonMonotoneTrigger(n), [], None
        for step, v in enumerate(losses):
            if expected is None and paper_rule(logs, v, n):
                expected = step
            logs.append(v)
            fired = trigger.observe(v, step)
            assert fired == (step == expected)  # fires once, at the paper's evaluation
        assert trigger.fired_at == expected


def test_the_trigger_waits_for_more_than_n_earlier_evaluations():
    trigger = NonMonotoneTrigger(nonmono=3)
    # Worse than the first at once, but only 1, 2, 3 earlier losses: len(logs) > 3 is needed.
    assert [trigger.observe(v, s) for s, v in enumerate([1.0, 2.0, 3.0, 4.0])] == [False] * 4
    # Now 4 earlier losses; min(logs[:-3]) = 1.0 < 1.5: switch.
    assert trigger.observe(1.5, 4) and trigger.fired_at == 4
    # Improving all along never fires, however long.
    steady = NonMonotoneTrigger(nonmono=1)
    assert not any(steady.observe(10.0 - s, s) for s in range(50))
    # A loss equal to the old best is not worse: no switch (strict >, as in the paper).
    equal = NonMonotoneTrigger(nonmono=1)
    assert [equal.observe(v, s) for s, v in enumerate([2.0, 3.0, 2.0, 2.01])] == [False] * 3 + [True]


def snapshots_of_training(model: torch.nn.Module, averaging: Averaging, steps: int) -> list[dict]:
    """Random "optimiser steps" on ``model``; the parameters after each one (float64)."""
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        averaging.update()
        seen.append({name: p.detach().double().clone() for name, p in model.named_parameters()})
    return seen


def averaged_weights(model: torch.nn.Module, averaging: Averaging) -> dict:
    with averaging.swapped_in():
        return {name: p.detach().double().clone() for name, p in model.named_parameters()}


def test_polyak_is_the_mean_of_the_iterates():
    model = torch.nn.LSTM(3, 4)
    averaging = Averaging(model, decay=0.0)
    seen = snapshots_of_training(model, averaging, 7)
    got = averaged_weights(model, averaging)
    for name in got:
        expected = sum(s[name] for s in seen) / len(seen)
        torch.testing.assert_close(got[name], expected, rtol=0, atol=1e-5)


def test_ema_is_the_normalised_exponential_average_of_the_iterates():
    model = torch.nn.Linear(5, 3)
    d = 0.8
    averaging = Averaging(model, decay=d)
    seen = snapshots_of_training(model, averaging, 9)
    got = averaged_weights(model, averaging)
    n = len(seen)
    for name in got:
        # avg = d avg + (1 - d) p from zero, over the total weight 1 - d^n
        weighted = sum((1 - d) * d ** (n - k) * seen[k - 1][name] for k in range(1, n + 1))
        torch.testing.assert_close(got[name], weighted / (1 - d**n), rtol=0, atol=1e-5)
    # The same recursion, run plainly from zero in float64, then bias-corrected.
    for name in got:
        avg = torch.zeros_like(seen[0][name])
        for s in seen:
            avg = d * avg + (1 - d) * s[name]
        torch.testing.assert_close(got[name], avg / (1 - d**n), rtol=0, atol=1e-5)


def test_nothing_is_averaged_before_ntasgd_triggers_then_polyak_from_its_step():
    model = torch.nn.Linear(2, 2)
    averaging = make_averaging(TrainConfig(optimizer="ntasgd", nonmono=1), model)
    before = snapshots_of_training(model, averaging, 3)
    raw = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    assert averaging.count == 0  # nothing averaged: evaluation and saves see the raw weights
    assert all(torch.equal(p, raw[name]) for name, p in averaged_weights(model, averaging).items())
    assert [averaging.observe(v, step) for step, v in ((3, 1.0), (3, 2.0), (3, 1.5))] == [False, False, True]
    after = snapshots_of_training(model, averaging, 4)
    got = averaged_weights(model, averaging)
    assert averaging.started_at == 3 and averaging.count == 4
    for name in got:  # only the iterates after the trigger count
        torch.testing.assert_close(got[name], sum(s[name] for s in after) / 4, rtol=0, atol=1e-5)
        assert not torch.allclose(got[name], sum(s[name] for s in before + after) / 7)


def test_swapping_the_average_in_and_out_gives_back_the_raw_weights_bit_for_bit():
    model = torch.nn.GRU(3, 5, num_layers=2)
    averaging = Averaging(model, decay=0.9)
    snapshots_of_training(model, averaging, 5)
    raw = {name: p.detach().clone() for name, p in model.named_parameters()}
    with averaging.swapped_in():
        inside = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert all(torch.equal(p, raw[name]) for name, p in model.named_parameters())
    assert all(torch.equal(inside[name], averaging.average[name]) for name in raw)
    assert not all(torch.equal(inside[name], raw[name]) for name in raw)


def test_tied_weights_are_averaged_once():
    embedding, decoder = torch.nn.Embedding(6, 4), torch.nn.Linear(4, 6)
    decoder.weight = embedding.weight
    model = torch.nn.ModuleDict({"embedding": embedding, "decoder": decoder})
    averaging = Averaging(model, decay=0.0)
    assert sorted(averaging.average) == ["decoder.bias", "embedding.weight"]
    snapshots_of_training(model, averaging, 2)
    with averaging.swapped_in():
        assert decoder.weight is embedding.weight


def round_trip(state: dict) -> dict:
    """Through torch.save and torch.load(weights_only=True), as train_state.pt goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("cfg", [TrainConfig(average="ema:0.95"), TrainConfig(average="polyak"),
                                 TrainConfig(optimizer="ntasgd", nonmono=1)])
def test_a_saved_average_continues_exactly(cfg):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    averaging = make_averaging(cfg, model)
    snapshots_of_training(model, averaging, 4)
    fired = [averaging.observe(v, step) for step, v in enumerate([2.0, 3.0, 2.5])]
    assert fired == [False, False, cfg.optimizer == "ntasgd"]  # NT-ASGD averages from here on
    snapshots_of_training(model, averaging, 2)
    saved = round_trip(averaging.state_dict())
    # Another process: a model holding other weights (those of model.safetensors, the average).
    other = torch.nn.Linear(3, 3)
    load_raw_weights(other, saved)
    resumed = make_averaging(cfg, other)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    a, b = snapshots_of_training(model, averaging, 3), snapshots_of_training(other, resumed, 3)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    got, expected = averaged_weights(other, resumed), averaged_weights(model, averaging)
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert resumed.state_dict()["trigger"] == averaging.state_dict()["trigger"]


def test_no_average_unless_asked():
    assert make_averaging(TrainConfig(), torch.nn.Linear(2, 2)) is None
