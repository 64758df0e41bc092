"""The training objective: cross-entropy, plus AWD-LSTM's activation penalties AR and TAR.

AR (``--ar``) keeps the last layer's outputs small, TAR (``--tar``) keeps them from
jumping between consecutive steps (Merity et al. 2018, section 4.6; Merity, McCann and
Socher 2017). Both act only in training; the loss a run reports is the cross-entropy.
"""

from __future__ import annotations

import torch

from .model import State


def step_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, state: State, *, ar: float = 0.0,
              tar: float = 0.0) -> tuple[torch.Tensor, State, torch.Tensor]:
    """The loss one training step back-propagates, the state after the window, and its terms (detached).

    x, y [B, t]. The loss is the mean cross-entropy, plus with ``ar`` > 0 the activation
    regularisation ``ar * mean(dropped^2)`` of the last layer's output after its dropout,
    and with ``tar`` > 0 the temporal one, ``tar * mean((raw_t - raw_{t-1})^2)`` of that
    output before dropout (Merity et al. 2018, section 4.6). The terms are
    ``[cross-entropy]``, or ``[cross-entropy, AR, TAR]`` when either is on; the
    cross-entropy is what a run reports as its training loss.

    >>> from lmgen.config import ModelConfig
    >>> from lmgen.model import RNNLM
    >>> model = RNNLM(ModelConfig(vocab_size=5, embed=4, hidden=4))
    >>> tokens = torch.zeros(2, 6, dtype=torch.long)
    >>> loss, state, terms = step_loss(model, tokens[:, :-1], tokens[:, 1:], None, ar=2.0)
    >>> torch.allclose(loss, terms.sum())
    True
    """
    # The model computes the cross-entropy itself (targets=y): an adaptive softmax then
    # evaluates only the clusters the targets fall in (lmgen.softmax).
    if not (ar or tar):  # the plain path: no outputs kept for penalties
        ce, state = model(x, state, targets=y)
        return ce, state, ce.detach()[None]
    ce, state, (raw, dropped) = model(x, state, return_outputs=True, targets=y)  # raw, dropped [B, t, H]
    ar_term = ar * dropped.float().pow(2).mean()
    # One-token windows have no consecutive pair; TAR is then 0 (not the NaN of an empty mean).
    diff = raw.float()[:, 1:] - raw.float()[:, :-1]  # [B, t-1, H]
    tar_term = tar * diff.pow(2).mean() if diff.numel() else diff.sum()
    return ce + ar_term + tar_term, state, torch.stack([ce, ar_term, tar_term]).detach()
