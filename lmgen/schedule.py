"""The optimiser and its learning-rate schedule: what ``--optimizer``, ``--lr`` and ``--schedule`` choose.

>>> from lmgen.config import TrainConfig
>>> Schedule(TrainConfig(warmup=0, schedule="cosine", min_lr=0.1)).scale(step=50, progress=1.0)
0.1
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


class Schedule:
    """Learning-rate multiplier: linear warm-up, then cosine to ``min_lr``, decay on plateau,
    or a per-epoch step decay.

    Cosine follows training progress in [0, 1]: steps done / step budget, or training
    time / time budget, whichever is further along. Step is the schedule of Zaremba et al.
    (2014): the full rate for ``decay_after`` epochs, then ``decay_factor`` once per epoch.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad = 0

    def scale(self, step: int, progress: float, epoch: int = 0) -> float:
        """The multiplier of ``--lr`` for ``step`` (0-based) at ``progress`` in [0, 1] of the budget."""
        cfg = self.cfg
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
        if cfg.schedule == "cosine":
            p = min(max(progress, 0.0), 1.0)
            return warm * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * p)))
        if cfg.schedule == "plateau":
            return warm * self.plateau_scale
        if cfg.schedule == "step":  # epoch is 0-based: epoch == decay_after is the first decayed one
            return warm * cfg.decay_factor ** max(0, epoch + 1 - cfg.decay_after)
        return warm

    def observe(self, val_loss: float) -> None:
        """Plateau: decay the rate when validation stops improving for ``plateau_patience`` evals."""
        if val_loss < self.plateau_best:
            self.plateau_best, self.plateau_bad = val_loss, 0
            return
        self.plateau_bad += 1
        if self.cfg.schedule == "plateau" and self.plateau_bad > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self.plateau_bad = 0

    def state_dict(self) -> dict[str, float]:
        """What a checkpoint keeps of the schedule (the plateau's memory)."""
        return {"scale": self.plateau_scale, "best": self.plateau_best, "bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from what :meth:`state_dict` saved."""
        self.plateau_scale, self.plateau_best = float(state["scale"]), float(state["best"])
        self.plateau_bad = int(state["bad"])


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, or AdamW (``--optimizer``), over every parameter of ``model``.

    ``ntasgd`` steps with SGD too, L2 ``--weight-decay`` and no momentum by default, as
    salesforce/awd-lstm-lm does; its averaging is :mod:`lmgen.averaging`'s.
    """
    params = list(model.parameters())
    if cfg.optimizer in ("sgd", "ntasgd"):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # fused=True: one kernel for all parameters; on CPU 5x faster than the default
    # for-each path (4 ms vs 21 ms a step for PTB's 4.6M parameters, measured here).
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99), fused=True)
