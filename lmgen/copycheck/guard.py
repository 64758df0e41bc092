"""``--max-copy N``: a decoding constraint that never lets generated text copy more than N
tokens in a row from the training split (:class:`CopyGuard`).

Before each token is chosen, the guard asks the copy index whether the row's last N
tokens occur in training; if they do, every token that followed them there would make a
copy of N + 1 tokens, and is masked (its score set to -inf) before the choice. So no
span of N + 1 tokens of the text (the prompt counts as text: a copied prompt is not
extended) is a training span, unless the prompt itself already holds one.

Two choices, made so that a sample always has a token to choose:

- ``[END]`` is never masked: ending a document copies no text.
- When every token is masked (every other token is banned and ``--min-new-tokens`` also
  forbids ``[END]`` at this step), ``[END]`` is allowed anyway and the sample ends there.

A match grows by one token a step at most, so after a walk back in the index has found
the text ends with a training span of m < N tokens, no ban is possible for the next
N - m - 1 steps, and none is looked for: the guard walks about once every N - m steps
(m is 8 characters on average for a tinyshakespeare model, so once every ~12 for N = 20),
and each walk stops where the match does. The tokens that followed a span are
remembered (a small LRU), since a model that copies tends to come back to the same spans.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .index import CopyIndex

MEMO_SIZE = 4096  # spans whose banned tokens are remembered


class CopyGuard:
    """Masks the tokens that would copy more than ``limit`` tokens of training text in a row.

    :func:`~lmgen.sampling.generate.sample_steps` uses it through the context it generates
    from (``ctx.guard``): :meth:`start` once, then each step :meth:`mask` the scores,
    :meth:`push` the chosen tokens and :meth:`keep` the rows that go on.

    >>> ctx = prime(model, tok, "To be")                              # doctest: +SKIP
    >>> ctx.guard = CopyGuard(training_index(ckpt), limit=20)         # doctest: +SKIP
    >>> generate(model, tok, ctx, GenerationConfig(max_new_tokens=500))  # doctest: +SKIP
    """

    def __init__(self, index: CopyIndex, limit: int):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"--max-copy must be a whole number of tokens >= 1, got {limit!r}")
        self.index, self.limit = index, limit
        self.end = index.end_id
        self.masked = 0  # tokens masked so far, all rows and steps together
        self._tails: list[deque[int]] = []  # per row: its last `limit` tokens since the last [END]
        self._bounds: list[int] = []  # per row: the longest match its tail can have now
        self._matched: list[int] = []  # per row: the match found by the last mask() (or a bound of it)
        self.walks = 0  # walks back in the index so far (the guard's cost)
        self._memo: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()

    def banned(self, history: Sequence[int]) -> torch.Tensor:
        """The token ids (LongTensor, sorted) that may not come after ``history``: those that
        follow its last ``limit`` tokens somewhere in the training split (``[END]`` never)."""
        tail = self._tail(history)
        k, lo, hi = self.index.match(np.array(tail[::-1], dtype=np.int64), self.limit)
        if k < self.limit:
            return torch.zeros(0, dtype=torch.long)
        return torch.from_numpy(self._following(tuple(tail), lo, hi))

    def _tail(self, history: Sequence[int]) -> list[int]:
        """The last ``limit`` tokens after the last ``[END]``: a document boundary ends every copy."""
        tail: list[int] = []
        for token in reversed(history):
            if token == self.end or len(tail) == self.limit:
                break
            tail.append(int(token))
        return tail[::-1]

    def _following(self, tail: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
        found = self._memo.get(tail)
        if found is None:
            found = self.index.following(lo, hi)
            found = found[found != self.end]
            self._memo[tail] = found
            if len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(tail)
        return found

    # -- the incremental use of sample_steps: one state per row of the batch

    def start(self, ids: Sequence[int], rows: int) -> None:
        """``rows`` rows that all continue the text ``ids`` (the context's, from its ``[END]``)."""
        tail = self._tail(ids)
        self._tails = [deque(tail, maxlen=self.limit) for _ in range(rows)]
        self._bounds = [self.limit] * rows
        self._matched = [0] * rows

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` [B, V] with each row's banned tokens at -inf (a new tensor when any is)."""
        assert scores.shape[0] == len(self._tails), "mask() needs one row of scores per row started"
        rows: list[int] = []
        cols: list[np.ndarray] = []
        for row, tail in enumerate(self._tails):
            if self._bounds[row] < self.limit or len(tail) < self.limit:  # no match can reach the limit yet
                self._matched[row] = min(self._bounds[row], len(tail))
                continue
            pattern = np.fromiter(reversed(tail), dtype=np.int64, count=len(tail))
            k, lo, hi = self.index.match(pattern, self.limit)
            self.walks += 1
            self._matched[row] = k
            if k == self.limit:
                banned = self._following(tuple(tail), lo, hi)
                if len(banned):
                    rows.append(row)
                    cols.append(banned)
        if not rows:
            return scores
        scores = scores.clone()  # never write into the caller's tensor (an expanded view, at the first step)
        index = torch.from_numpy(np.concatenate(cols)).to(scores.device)
        which = torch.repeat_interleave(torch.tensor(rows), torch.tensor([len(c) for c in cols])).to(scores.device)
        scores[which, index] = -math.inf
        self.masked += len(index)
        stuck = torch.isinf(scores[rows]).all(dim=1) if scores.dtype.is_floating_point else None
        if stuck is not None and bool(stuck.any()):  # nothing left to choose: [END] ends the sample
            for row in np.array(rows)[stuck.cpu().numpy()]:
                scores[int(row), self.end] = 0.0
        return scores

    def push(self, tokens: Sequence[int]) -> None:
        """The token each row chose at the step :meth:`mask` prepared."""
        assert len(tokens) == len(self._tails)
        for row, token in enumerate(tokens):
            if token == self.end:
                self._tails[row].clear()
                self._bounds[row] = 0
            else:
                self._tails[row].append(int(token))
                self._bounds[row] = self._matched[row] + 1  # a match grows by one token a step at most

    def keep(self, rows: Sequence[int]) -> None:
        """Only ``rows`` (indices into the current rows, in order) go on."""
        self._tails = [self._tails[r] for r in rows]
        self._bounds = [self._bounds[r] for r in rows]
        self._matched = [self._matched[r] for r in rows]
