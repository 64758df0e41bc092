"""Choosing tokens: logits [B, V] -> one token per row.

:func:`adjust_logits` applies the repetition penalty and ``min_new_tokens``;
:func:`choose_tokens` takes the argmax (greedy) or inverts the distribution after
temperature, top-k and top-p at one uniform number per row. The uniform numbers come
from one generator per sample (:func:`sample_generators`, :class:`_Uniforms`), so a
sample's text does not depend on its batch-mates.

>>> choose_tokens(torch.tensor([[0.0, 2.0, 1.0]]), GenerationConfig(do_sample=False), None)
tensor([1])
"""

from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch
from torch import Tensor

from ..generation import GenerationConfig


def adjust_logits(logits: Tensor, config: GenerationConfig, seen: Tensor | None, step: int, end_id: int = 0) -> Tensor:
    """Logits [B, V] after the repetition penalty and ``min_new_tokens`` (a new tensor).

    Repetition penalty as CTRL (Keskar et al. 2019) and Hugging Face: a token already in
    the text (``seen`` [B, V] bool) has its logit divided by the penalty if positive,
    multiplied if negative.
    """
    logits = logits.float()
    if seen is not None and config.repetition_penalty != 1.0:
        p = config.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if step < config.min_new_tokens:
        logits = logits.clone()  # never write into the caller's (possibly expanded) tensor
        logits[:, end_id] = -math.inf
    return logits


def choose_tokens(logits: Tensor, config: GenerationConfig, uniforms: Tensor | None) -> Tensor:
    """The next token of each row: logits [B, V] (already adjusted) -> tokens [B].

    Greedy is the argmax. Sampling inverts the cumulative distribution at one uniform
    number per row, ``uniforms`` [B] in [0, 1) (1 is taken too): exact (the chance of
    token v is its probability after temperature, top-k and top-p), and one random number
    per token.
    Top-k keeps the k most likely tokens; top-p then keeps the fewest most likely tokens
    whose probability reaches p of what is left: a token stays while the mass of the more
    likely ones is below p (so always at least one).

    >>> choose_tokens(torch.tensor([[0.0, 2.0, 1.0]]), GenerationConfig(do_sample=False), None)
    tensor([1])
    """
    if not config.do_sample or config.num_beams > 1:
        return logits.argmax(dim=-1)
    assert uniforms is not None
    V = logits.shape[-1]
    probs = torch.softmax(logits.double() / config.temperature, dim=-1)  # [B, V]
    k = V if config.top_k is None else min(config.top_k, V)
    order = None
    if k < V or config.top_p < 1.0:
        probs, order = probs.topk(k, dim=-1)  # [B, k], most likely first
    cdf = probs.cumsum(dim=-1)
    if logits.shape[0] <= _ROWS_IN_PYTHON:
        return _invert_rows(cdf, order, config.top_p, uniforms)
    keep = torch.full_like(uniforms, cdf.shape[1], dtype=torch.long)[:, None]  # [B, 1] tokens kept
    if config.top_p < 1.0:
        keep = torch.searchsorted(cdf, config.top_p * cdf[:, -1:]) + 1  # 1 + #(mass before a token < p)
    total = cdf.gather(1, keep - 1)  # [B, 1] the kept mass
    pos = torch.searchsorted(cdf, uniforms[:, None].to(cdf) * total, right=True)
    # u < 1 makes u * total < total, so pos < keep; at u = 1 (not from torch.rand, but a
    # caller's numbers may hold it) take the last kept token with a probability above 0
    pos = torch.where(pos < keep, pos, torch.searchsorted(cdf, total))
    return (pos if order is None else order.gather(1, pos)).squeeze(1)


# Up to this many rows, choose_tokens inverts the distribution row by row in Python (two
# bisections on a list): ~15 small kernels fewer than the vectorised search, which for
# one stream of a 2x512 LSTM was a fifth of the time per token (benchmarks/sampling.py).
_ROWS_IN_PYTHON = 16


def _invert_rows(cdf: Tensor, order: Tensor | None, top_p: float, uniforms: Tensor) -> Tensor:
    """:func:`choose_tokens`' inversion for a few rows, the same arithmetic (tested equal)."""
    ranked = order.tolist() if order is not None else None
    chosen = []
    for row, (mass, u) in enumerate(zip(cdf.tolist(), uniforms.tolist())):
        keep = bisect.bisect_left(mass, top_p * mass[-1]) + 1 if top_p < 1.0 else len(mass)
        pos = bisect.bisect_right(mass, u * mass[keep - 1], 0, keep)
        if pos == keep:
            pos = bisect.bisect_left(mass, mass[keep - 1], 0, keep)
        chosen.append(pos if ranked is None else ranked[row][pos])
    return torch.tensor(chosen, device=cdf.device)


class _Uniforms:
    """One stream of uniform numbers per sample, drawn from the sample's own generator.

    Drawn in chunks of ``CHUNK`` per row (a Python call per row every CHUNK steps, not
    every step); dropping rows keeps the others' streams as they were.
    """

    CHUNK = 32

    def __init__(self, generators: list[torch.Generator], device: torch.device):
        self.generators = generators
        self.device = device
        self.column = self.CHUNK
        self.buffer: Tensor | None = None

    def next(self) -> Tensor:
        if self.column == self.CHUNK:
            rows = [torch.rand(self.CHUNK, generator=g, dtype=torch.float64) for g in self.generators]
            self.buffer = torch.stack(rows).to(self.device)  # [B, CHUNK]
            self.column = 0
        assert self.buffer is not None
        self.column += 1
        return self.buffer[:, self.column - 1]

    def keep(self, rows: list[int], index: Tensor) -> None:
        self.generators = [self.generators[r] for r in rows]
        if self.buffer is not None:
            self.buffer = self.buffer.index_select(0, index)


def sample_generators(generator: torch.Generator | Sequence[torch.Generator] | None, n: int) -> list[torch.Generator]:
    """One CPU generator per sample: the given list, or seeded from one generator.

    >>> gens = sample_generators(torch.Generator().manual_seed(0), 3)
    >>> len(gens)
    3
    """
    if generator is None:
        generator = torch.Generator()
        generator.seed()  # a fresh random seed, without touching torch's global RNG
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        return [torch.Generator().manual_seed(s) for s in seeds]
    generators = list(generator)
    if len(generators) != n:
        raise ValueError(f"{len(generators)} generators for {n} samples")
    return generators


def _seen_mask(ids: list[int], rows: int, V: int, device: torch.device, end_id: int) -> Tensor:
    """[rows, V] bool: which tokens the text already has (the repetition penalty's memory)."""
    seen = torch.zeros(rows, V, dtype=torch.bool, device=device)
    prior = [i for i in ids if i != end_id]  # the [END] that starts a document is no repetition
    if prior:
        seen[:, torch.tensor(prior, device=device)] = True
    return seen

