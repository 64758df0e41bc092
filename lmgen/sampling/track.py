"""What each generated row has produced so far: its text, cut at a stop string, why it
stopped, and the log-probability of its tokens (:class:`Track`).

Stop strings follow Hugging Face's ``stop_strings``: a row stops right after the first
match of any stop string in its *generated* text (the prompt is not searched), matched
across token boundaries: a match may span many char tokens, or a word's glue space and
its piece. Each new piece is searched together with the end of the text before it, the
longest stop string's length minus one characters, the most a match can reach back::

    text so far "...and then he sa"   new piece "id."
                         └ tail "sa" ┘ + "id."  ──find "said"──►  match ends in the piece: stop

The returned text ends with the match. A token whose text runs past the match (a word, a
SentencePiece piece) stays in the ids; only its text beyond the match is cut.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Sequence

from ..tokenizer import TextDecoder, Tokenizer

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""``\n``, ``\t``, ``\r`` and ``\\`` as the characters they name: a newline is hard to
    type into a shell argument or a REPL line. Other backslashes stay as they are.

    >>> unescape(r"one\ntwo\\n"), unescape(r"a\b")
    ('one\ntwo\\n', 'a\\b')
    """
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def first_stop(text: str, stop_strings: Sequence[str]) -> tuple[int, str] | None:
    """``(end, stop string)`` of the match that ends first in ``text`` (on a tie, the
    first listed), or None.

    >>> first_stop("a cat. A dog.", [". ", "dog"])
    (7, '. ')
    """
    best: tuple[int, str] | None = None
    for s in stop_strings:
        at = text.find(s)  # the first occurrence of s is also the one that ends first
        if at >= 0 and (best is None or at + len(s) < best[0]):
            best = (at + len(s), s)
    return best


class Track:
    """Per row of a generation: text pieces not yet shown, ids, stop reason, log-probability.

    :func:`~lmgen.sampling.generate.sample_steps` pushes every chosen token (and its
    log-probability when ``scores``) and drops a row once :attr:`done`; readers take the
    row's text as it comes (:meth:`take`). ``stops[row]`` is ``"end"`` ([END] chosen),
    ``"stop:STR"`` or ``"length"`` (not done yet, or ``max_new_tokens`` reached).

    >>> track = Track(tok, tok.end_id, rows=1, stop_strings=["at"])  # doctest: +SKIP
    >>> for t in tok.encode("the cat sat"): track.push(0, t)          # doctest: +SKIP
    ... # stops inside: the row is done after "the cat"
    """

    def __init__(self, tokenizer: Tokenizer, previous: int, rows: int, stop_strings: Sequence[str] = (), *,
                 scores: bool = False):
        self.tokenizer = tokenizer
        self.end = tokenizer.end_id
        self.stop_strings = tuple(stop_strings)
        self.reach = max(map(len, self.stop_strings), default=1) - 1  # tail chars a new match can start in
        self.scores = scores  # whether log-probabilities are pushed with the tokens
        self.decoders = [TextDecoder(tokenizer, previous) for _ in range(rows)]
        self.tails = [""] * rows
        self.pieces: list[list[str]] = [[] for _ in range(rows)]  # text not taken yet
        self.pending = [0.0] * rows  # log-prob of the tokens behind the text not taken yet
        self.ids: list[list[int]] = [[] for _ in range(rows)]  # generated ids, [END] excluded
        self.logprobs = [0.0] * rows  # summed log-probability of the pushed tokens, [END] included
        self.stops = ["length"] * rows
        self.done = [False] * rows

    def push(self, row: int, token: int, logprob: float | None = None) -> None:
        """One chosen token of ``row`` (its log-probability when ``scores``)."""
        assert not self.done[row], "a done row gets no more tokens"
        if logprob is not None:
            self.logprobs[row] += logprob
            self.pending[row] += logprob
        if token == self.end:
            self._add(row, self.decoders[row].flush())  # [END] itself is not text
            if not self.done[row]:
                self.done[row], self.stops[row] = True, "end"
            return
        self.ids[row].append(token)
        self._add(row, self.decoders[row].push(token))

    def finish(self, row: int) -> None:
        """``max_new_tokens`` reached: the text the decoder held back (SentencePiece bytes)."""
        if not self.done[row]:
            self._add(row, self.decoders[row].flush())
            self.done[row] = True

    def take(self, row: int) -> str:
        """The row's text since the last take."""
        text = "".join(self.pieces[row])
        self.pieces[row] = []
        self.pending[row] = 0.0
        return text

    def take_scored(self, row: int) -> tuple[str, float]:
        """:meth:`take` and the probability of the tokens behind that text (1.0 if none)."""
        logprob = self.pending[row]
        return self.take(row), math.exp(logprob)

    def reorder(self, sources: Sequence[int]) -> None:
        """Beam search: row ``i`` continues row ``sources[i]`` (rows may be copied or dropped)."""
        self.decoders = [_copy_decoder(self.decoders[r]) for r in sources]
        for name in ("tails", "pending", "logprobs", "stops", "done"):
            setattr(self, name, [getattr(self, name)[r] for r in sources])
        self.pieces = [list(self.pieces[r]) for r in sources]
        self.ids = [list(self.ids[r]) for r in sources]

    def _add(self, row: int, piece: str) -> None:
        if not piece:
            return
        if self.stop_strings:
            tail = self.tails[row]
            hit = first_stop(tail + piece, self.stop_strings)  # the tail holds no match: any is new
            if hit is not None:
                end, s = hit
                piece = piece[: end - len(tail)]
                self.done[row], self.stops[row] = True, f"stop:{s}"
            elif self.reach:
                self.tails[row] = (tail + piece)[-self.reach:]
        self.pieces[row].append(piece)


def _copy_decoder(decoder: TextDecoder) -> TextDecoder:
    """A decoder that continues independently (its token-to-text cache is shared: it only grows)."""
    twin = copy.copy(decoder)
    twin._bytes = list(decoder._bytes)  # SentencePiece bytes held back: each beam its own
    return twin
