"""How far back a gradient reaches: ||d loss_T / d h_{T-k}|| against k (vanishing gradients).

Numbers only; :func:`lmgen.viz.vanishing_gradients` draws them. The model is stepped
one token at a time with :func:`lmgen.cells.fused_step`, so that every h_t is a tensor
of its own whose gradient can be read.

>>> norms = vanishing_gradient_norms(("rnn", "lstm"), steps=10, hidden=8)   # doctest: +SKIP
>>> norms["rnn"][9] < norms["lstm"][9]                                      # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import cells
from .config import ModelConfig
from .errors import ConfigError
from .model import RNNLM


def gradient_norms(model: RNNLM, tokens, *, layer: int | None = None) -> np.ndarray:
    """||d loss_T / d h_{T-k}|| for k = 0..T-1, averaged over the batch.

    ``tokens`` [B, T+1] (inputs then the last target); loss_T is the cross-entropy of the
    last prediction only; h is the hidden state of ``layer`` (default: the last). The
    model is stepped one token at a time so that every h_t is a tensor of its own.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    B, T = tokens.shape[0], tokens.shape[1] - 1  # tokens [B, T + 1]
    if T < 1:
        raise ConfigError("gradient_norms needs at least 2 tokens per row")
    L, cell = model.config.layers, model.config.cell
    layer = L - 1 if layer is None else layer
    if not 0 <= layer < L:
        raise ConfigError(f"layer {layer} is out of range: this model has layers 0..{L - 1}")
    was_training = model.training
    model.eval()
    try:
        # Each layer's next input and next state are taken from the *same* tensor h: then
        # h.grad holds every path (upwards through the layers and forwards in time).
        weights = [cells.layer_weights(model.rnn, lay) for lay in range(L)]
        inp_all = model.embedding(tokens[:, :-1])  # [B, T, E]
        states = [cells.zero_state(cell, B, size, inp_all) for size in model.config.sizes]
        hs = []  # hs[t]: h of `layer` after step t, [B, H]
        for t in range(T):
            inp = inp_all[:, t]  # [B, E]
            for lay in range(L):
                states[lay] = cells.fused_step(cell, inp, states[lay], weights[lay])
                inp = cells.output(cell, states[lay])  # [B, H]
                inp.retain_grad()
                if lay == layer:
                    hs.append(inp)
        loss = F.cross_entropy(model.decoder(inp), tokens[:, -1])
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return np.array([hs[T - 1 - k].grad.norm(dim=-1).mean().item() for k in range(T)])


def vanishing_gradient_norms(
    cell_names: Sequence[str] = ("rnn", "gru", "lstm"),
    *,
    steps: int = 60,
    hidden: int = 64,
    vocab: int = 30,
    batch: int = 16,
    seed: int = 0,
    models: dict | None = None,
) -> dict[str, np.ndarray]:
    """{name: :func:`gradient_norms` [steps]} on random tokens, one model per cell.

    Default: freshly initialised models (lmgen's init: LSTM forget bias 1); pass
    ``models={"name": model}`` (e.g. briefly trained ones) and they are used instead.
    """
    gen = torch.Generator().manual_seed(seed)
    if models is None:
        models = {}
        for cell in cell_names:
            torch.manual_seed(seed)
            models[cell] = RNNLM(ModelConfig(cell=cell, vocab_size=vocab, embed=32, hidden=hidden))
    results = {}
    for name, model in models.items():
        V = model.config.vocab_size
        tokens = torch.randint(2, V, (batch, steps + 1), generator=gen)
        results[name] = gradient_norms(model, tokens)
    return results
