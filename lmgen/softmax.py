"""The adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs") as a decoder.

With a large vocabulary the decoder dominates training: a 2 x 650 LSTM on WikiText-2's
33k words spends about three quarters of its arithmetic in the [H, V] product and its
gradient. The adaptive softmax splits the tokens by training frequency into a head (the
most frequent ``cutoffs[0]``, plus one entry per tail cluster) and tail clusters, each
behind a projection ``div`` times narrower than the previous one's. A training step
computes the head for every position but a cluster only for the positions whose target
lies in it; Zipf's law makes that rare for the big clusters.

It is not an approximation of the probabilities it defines: every token has an exact
log-probability, log p(head entry) + log p(token | cluster). :class:`AdaptiveDecoder`
therefore returns the full [.., V] log-probabilities wherever the model's logits are read
(evaluation, sampling, beam search, the REPL, the cache, trace): a log-softmax of them
gives them back, so perplexities stay comparable with a full softmax's. Only training
takes the cheap path, :meth:`AdaptiveDecoder.loss`.

The clusters follow training frequency, not token ids (a char tokenizer's ids are in
code-point order): ``rank`` maps each token id to its place by frequency, set from the
training split's counts (:meth:`AdaptiveDecoder.order_by`) and saved with the weights.

>>> dec = AdaptiveDecoder(hidden=16, vocab_size=20, cutoffs=[5, 12])
>>> logp = dec(torch.randn(3, 16))
>>> logp.shape, bool(torch.allclose(logp.exp().sum(-1), torch.ones(3)))
(torch.Size([3, 20]), True)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CheckpointError


class AdaptiveDecoder(nn.Module):
    """hidden [..., H] -> exact log-probabilities [..., V] in token-id order; :meth:`loss` for training.

    The clusters are PyTorch's ``nn.AdaptiveLogSoftmaxWithLoss`` (head with a bias, tails
    without), over frequency ranks.
    """

    def __init__(self, hidden: int, vocab_size: int, cutoffs: Sequence[int], div: float = 4.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.clusters = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab_size, list(cutoffs), div_value=div,
                                                      head_bias=True)
        # rank[t]: token t's place by training frequency (0 = most frequent)
        self.register_buffer("rank", torch.arange(vocab_size))

    def order_by(self, counts: np.ndarray | Tensor) -> None:
        """Put the most frequent tokens in the head: ``counts`` [V] from the training split.

        Ties keep id order (a stable sort), so the order is reproducible.
        """
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        assert counts.shape == (self.vocab_size,), counts.shape
        order = torch.sort(-counts, stable=True).indices  # ids, most frequent first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.vocab_size)
        self.rank.copy_(rank)

    def forward(self, h: Tensor) -> Tensor:
        """h [..., H] -> log p(token | h) [..., V], token t in column t."""
        flat = h.reshape(-1, h.shape[-1])
        logp = self.clusters.log_prob(flat.to(self.clusters.head.weight.dtype))  # [N, V] in rank order
        return logp.index_select(1, self.rank).reshape(*h.shape[:-1], self.vocab_size)

    def loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """Mean -log p(target | h) over every position: h [..., H], targets [...] (token ids).

        The head for all positions, each cluster for its own positions only: the saving.
        """
        flat = h.reshape(-1, h.shape[-1])
        return self.clusters(flat, self.rank[targets.reshape(-1)]).loss

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A checkpoint's rank indexes every output: it must be a permutation of 0..V-1, or an
        # out-of-range index would surface as an obscure error (or a read out of bounds) later.
        rank = state_dict.get(prefix + "rank")
        if rank is not None:
            ok = rank.dtype == torch.int64 and rank.shape == (self.vocab_size,)
            if not ok or not torch.equal(torch.sort(rank).values, torch.arange(self.vocab_size)):
                raise CheckpointError("the adaptive softmax's token order (decoder.rank) is not a permutation "
                                      f"of the {self.vocab_size:,} token ids: the checkpoint is damaged")
        super()._load_from_state_dict(state_dict, prefix, *args)


def token_counts(tokens: Any, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """How often each id occurs in ``tokens`` (a memmap of any size), [V] int64.

    In chunks: ``np.bincount`` copies its input as int64, 8 bytes a token at once.

    >>> token_counts(np.array([2, 0, 2], dtype=np.uint16), 4).tolist()
    [1, 0, 2, 0]
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[start : start + chunk]), minlength=vocab_size)[:vocab_size]
    return counts


def decoder_parameters(hidden: int, vocab_size: int, cutoffs: Sequence[int], div: float) -> int:
    """Parameters of an :class:`AdaptiveDecoder` (or a full [H, V] decoder with bias if no cut-offs).

    >>> dec = AdaptiveDecoder(16, 20, [5, 12])
    >>> decoder_parameters(16, 20, [5, 12], 4.0) == sum(p.numel() for p in dec.parameters())
    True
    """
    if not cutoffs:
        return hidden * vocab_size + vocab_size
    edges = list(cutoffs) + [vocab_size]
    head = edges[0] + len(cutoffs)
    total = (hidden + 1) * head
    for i in range(len(cutoffs)):
        width = int(hidden // (div ** (i + 1)))  # as nn.AdaptiveLogSoftmaxWithLoss sizes its projections
        total += hidden * width + width * (edges[i + 1] - edges[i])
    return total
