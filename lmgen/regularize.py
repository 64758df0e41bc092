"""AWD-LSTM's dropouts (Merity et al. 2018) as pure functions of a tensor and a probability.

Each draws its mask from the global RNG, as ``nn.Dropout`` does, so a seeded run and its
resume draw the same masks; each is the identity when p == 0 or outside training (no draw
at all then). Survivors are scaled by 1/(1-p) so that a unit's expected value is unchanged::

    locked dropout     x    [B, T, H] * m [B, 1, H]   one mask per sequence, the same at every step
    embedding dropout  W    [V, E]    * m [V, 1]      a dropped token is dropped everywhere in the batch
    weight drop        W_hh [G*H, H]  * m [G*H, H]    DropConnect: one mask per forward call

The model (:mod:`lmgen.model`) decides where each one goes; the cells run with the dropped
weights through :func:`lmgen.cells.run_stack`.

>>> x = torch.ones(2, 5, 3)
>>> y = locked_dropout(x, 0.5, training=True)
>>> bool((y == y[:, :1]).all())  # every step has its sequence's mask
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Variational dropout (Gal & Ghahramani 2016): x [B, T, H] -> x * m [B, 1, H] / (1-p).

    A per-step mask (Zaremba et al. 2014) lets a unit's information through at some steps
    and not others; one mask for the whole sequence drops the same units at every step, so
    the recurrence sees a consistently thinned network.
    """
    if not training or p == 0.0:
        return x
    B, _, H = x.shape
    return x * keep_mask((B, 1, H), p, x)


def embedding_dropout(weight: Tensor, tokens: Tensor, p: float, training: bool) -> Tensor:
    """tokens [B, T] -> embeddings [B, T, E], each token type's row of ``weight`` [V, E] dropped with p.

    Dropping a word's whole vector (Gal & Ghahramani 2016) removes the word, not some of its
    features, wherever it occurs in the batch. Equal to looking ``tokens`` up in
    ``weight * m[V, 1] / (1-p)`` (awd-lstm-lm's ``embedded_dropout``), but the mask is gathered
    instead of multiplied into all V rows: a word vocabulary's matrix is large, a batch small.
    """
    embedded = F.embedding(tokens, weight)  # [B, T, E]
    if not training or p == 0.0:
        return embedded
    mask = keep_mask((weight.shape[0], 1), p, weight)  # [V, 1]
    return embedded * F.embedding(tokens, mask)  # [B, T, E] * [B, T, 1]


def weight_drop(w_hh: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect (Wan et al. 2013) on a recurrent matrix W_hh [G*H, H]: a new matrix, same shape.

    Dropping connections of W_hh rather than activations regularises the recurrence without
    touching the fused kernel (which cannot apply a mask between its steps). The result is a
    function of the parameter, so gradients reach the parameter through the mask.
    """
    if not training or p == 0.0:
        return w_hh
    return w_hh * keep_mask(w_hh.shape, p, w_hh)


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, like: Tensor) -> Tensor:
    """A dropout mask of ``shape``: 0 with probability p, else 1/(1-p) (dtype and device of ``like``).

    Drawn as U(0, 1) < 1-p rather than with ``bernoulli_``, which on CPU takes 3x as long
    (3.6 ms against 1.2 ms for a 1024 x 256 W_hh): weight drop draws G*H*H per layer per
    step. U(0, 1) is float32 even for half weights, whose coarse grid would bias p.
    """
    keep = 1.0 - p
    return (torch.rand(shape, device=like.device) < keep).to(like.dtype).div_(keep)
