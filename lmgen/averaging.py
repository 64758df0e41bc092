"""Weight averaging: the weights that evaluation, ``best/`` and the saved model use (``--average``, NT-ASGD).

Training steps the raw weights p; an average of the iterates p_1, p_2, ... generalises
better than the last one (Polyak & Juditsky 1992), and for LSTM language models it is
worth several points of perplexity (Merity et al. 2018). Three ways to average:

    --average polyak       the equal-weight mean of every iterate since the run began
    --average ema:0.999    an exponential moving average, each older iterate weighted 0.999x less
    --optimizer ntasgd     SGD, then the Polyak mean from the evaluation at which validation
                           stops improving (:class:`NonMonotoneTrigger`) on

The average is a float32 copy of the parameters, updated after every optimiser step;
:meth:`Averaging.swapped_in` puts it into the model for an evaluation or a save and the
raw weights back afterwards, bit for bit. ``model.safetensors`` (``last/`` and ``best/``)
holds the average, which is what inference loads; ``train_state.pt`` holds the raw
weights and the average's state, so that ``--resume`` continues exactly.

>>> model = torch.nn.Linear(2, 1)
>>> averaging = Averaging(model, decay=0.0)  # polyak
>>> for _ in range(3):
...     with torch.no_grad():
...         model.weight += 1.0
...     averaging.update()
>>> with averaging.swapped_in():  # the mean of the three iterates: the middle one
...     middle = model.weight.detach().clone()
>>> torch.allclose(middle + 1.0, model.weight.detach())
True
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from .config import TrainConfig

NOT_STARTED = -1  # the start step saved while NT-ASGD has not switched yet


class NonMonotoneTrigger:
    """NT-ASGD's switch from SGD to averaged SGD (Merity et al. 2018, Algorithm 1).

    At each evaluation, with ``logs`` the validation losses of the earlier ones, it fires
    when ``len(logs) > n`` and the new loss is worse than the best of all but the last n
    of them: ``val > min(logs[:-n])``. That is the paper's "t > n and v > min_{l <= t-n-1}
    logs[l]", as salesforce/awd-lstm-lm's main.py checks it before appending the new loss
    (there once per epoch; here once per ``--eval-every``). It fires once.

    >>> trigger = NonMonotoneTrigger(nonmono=2)
    >>> [trigger.observe(v, step) for step, v in enumerate([5.0, 4.0, 3.0, 3.5, 3.2, 4.5])]
    [False, False, False, False, False, True]
    >>> trigger.fired_at
    5
    """

    def __init__(self, nonmono: int):
        assert nonmono >= 1
        self.nonmono = nonmono
        self.logs: list[float] = []
        self.fired_at: int | None = None

    def observe(self, val_loss: float, step: int) -> bool:
        """Count the validation loss of the evaluation at ``step``; True when averaging starts now."""
        if self.fired_at is not None:
            return False
        n = self.nonmono
        fire = len(self.logs) > n and val_loss > min(self.logs[:-n])
        self.logs.append(val_loss)
        if fire:
            self.fired_at = step
        return fire

    def state_dict(self) -> dict[str, Any]:
        return {"logs": list(self.logs), "fired_at": NOT_STARTED if self.fired_at is None else self.fired_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logs = [float(v) for v in state["logs"]]
        self.fired_at = None if state["fired_at"] == NOT_STARTED else int(state["fired_at"])


class Averaging:
    """A running average of ``model``'s parameters: Polyak (``decay`` 0) or exponential (0 < ``decay`` < 1).

    After the n-th update since :meth:`start`, with p_k the parameters after the k-th:

    * Polyak: avg_n = (p_1 + ... + p_n) / n
    * EMA: avg_n = sum_k (1 - d) d^(n-k) p_k / (1 - d^n), i.e. avg = d avg + (1 - d) p
      started from zero and divided by its total weight (the bias correction of Adam,
      Kingma & Ba 2015). Without that, ema:0.999 would still weigh the random
      initialisation 37 % after 1,000 steps, and evaluation and ``best/`` would see it.

    ``start=None`` waits for :meth:`start` (NT-ASGD before its trigger); until the first
    update the average is the raw weights themselves. ``trigger``: NT-ASGD's switch.
    """

    def __init__(self, model: nn.Module, decay: float, start: int | None = 0,
                 trigger: NonMonotoneTrigger | None = None):
        assert 0.0 <= decay < 1.0
        self.params = dict(model.named_parameters())  # a tied matrix once, under its first name
        self.decay = decay
        self.trigger = trigger
        self.started_at: int | None = None
        self.count = 0
        self.average: dict[str, torch.Tensor] = {}
        if start is not None:
            self.start(start)

    def start(self, step: int) -> None:
        """Average the iterates after ``step`` from now on."""
        self.started_at, self.count = step, 0
        self.average = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.params.items()}

    def weight(self) -> float:
        """How much of the newest iterate the n-th update takes in."""
        n = self.count
        return 1.0 / n if self.decay == 0.0 else (1.0 - self.decay) / (1.0 - self.decay**n)

    @torch.no_grad()
    def update(self) -> None:
        """Take in the parameters after an optimiser step."""
        if self.started_at is None:
            return
        self.count += 1
        averages, params = list(self.average.values()), [p.detach().float() for p in self.params.values()]
        if self.count == 1:  # weight 1: the average is the first iterate itself, exactly
            torch._foreach_copy_(averages, params)
        else:  # avg += w (p - avg), one fused kernel per device (as torch.optim.swa_utils does)
            torch._foreach_lerp_(averages, params, self.weight())

    def observe(self, val_loss: float, step: int) -> bool:
        """Feed NT-ASGD's trigger an evaluation; True (and averaging starts) when it fires."""
        if self.trigger is None or not self.trigger.observe(val_loss, step):
            return False
        self.start(step)
        return True

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the block (evaluation, a save); the raw ones back after."""
        if not self.count:
            yield  # nothing averaged yet: the raw weights are the average
            return
        raw = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])

    def state_dict(self) -> dict[str, Any]:
        """The ``average`` entry of train_state.pt: the raw weights, the average and where it stands.

        Call it with the raw weights in the model (outside :meth:`swapped_in`).
        """
        return {
            "decay": self.decay, "count": self.count,
            "started_at": NOT_STARTED if self.started_at is None else self.started_at,
            "weights": {name: p.detach().cpu().clone() for name, p in self.params.items()},
            "average": {name: a.cpu().clone() for name, a in self.average.items()},
            "trigger": self.trigger.state_dict() if self.trigger is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the average that :meth:`state_dict` saved (:func:`load_raw_weights` puts the raw weights back).

        A save of another kind (EMA resumed as Polyak, say) starts the new average afresh,
        which is all that can be meant.
        """
        if self.trigger is not None and state.get("trigger"):
            self.trigger.load_state_dict(state["trigger"])
        started = int(state["started_at"])
        same_kind = float(state["decay"]) == self.decay and (self.trigger is None) == (not state.get("trigger"))
        if not same_kind or started == NOT_STARTED:
            return
        self.start(started)
        self.count = int(state["count"])
        for name, avg in self.average.items():
            avg.copy_(state["average"][name])


def load_raw_weights(model: nn.Module, state: dict[str, Any] | None) -> None:
    """Put the raw weights of a saved ``average`` entry back into ``model`` (in place).

    ``model.safetensors`` of an averaged run holds the average; training continues from
    the raw weights, which only train_state.pt keeps, whatever ``--average`` the resumed
    run asks for. Without an entry nothing changes.
    """
    if not state:
        return
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state["weights"][name])


def make_averaging(cfg: TrainConfig, model: nn.Module) -> Averaging | None:
    """The averaging ``--average`` / ``--optimizer ntasgd`` ask for, or None."""
    if cfg.optimizer == "ntasgd":
        # awd-lstm-lm's switch to ASGD(t0=0, lambd=0): the same SGD steps, from then on averaged equally.
        return Averaging(model, decay=0.0, start=None, trigger=NonMonotoneTrigger(cfg.nonmono))
    decay = cfg.average_decay()
    return None if decay is None else Averaging(model, decay=decay, start=0)
