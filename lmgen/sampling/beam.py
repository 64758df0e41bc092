"""Beam search: the ``num_return_sequences`` best continuations of a prompt.

Deterministic; scores are summed log-probabilities, compared after a length penalty
(as Hugging Face's ``generate`` with ``num_beams``, ``length_penalty`` and its default
``early_stopping=False``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from ..generation import GenerationConfig
from ..tokenizer import Tokenizer, decode_continuation
from .choose import _seen_mask, adjust_logits
from .context import Context, Sample, as_context, check_batch
from .recurrence import Recurrence
from .track import Track, first_stop


@torch.inference_mode()
def beam_search(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
) -> list[Sample]:
    """The ``num_return_sequences`` best continuations by beam search of width W.

    A hypothesis's score is the sum of its tokens' log-probabilities (after the
    repetition penalty), ``[END]`` included when it has one; hypotheses compete on
    ``score / length ** length_penalty`` (length in tokens, ``[END]`` included).
    Each step ranks the W x V extensions of the W beams::

        beams [W] ──step──► log p [W, V] + score[:, None] ──top 2W──► in order of score:
            [END] in the first W ranks ──► finished (the W best are kept)
            any other token              ──► next beam, until W of them

    As Hugging Face's default (``early_stopping=False``), the search stops once W
    hypotheses are finished and the best live beam, normalised at its current length,
    cannot beat the worst of them; at ``max_new_tokens`` the live beams join the finished.
    A beam whose text reaches one of ``config.stop_strings`` is finished as at ``[END]``
    (its length without an ``[END]``), its text cut right after the match.

    >>> best = beam_search(model, tok, "The", GenerationConfig(num_beams=5, do_sample=False))[0]  # doctest: +SKIP
    """
    config = config or GenerationConfig(num_beams=4, do_sample=False)
    check_batch(model, 2 * config.num_beams, config.max_new_tokens, "--beam")  # 2W candidates a step
    ctx = as_context(model, tokenizer, prompt)
    if ctx.cache is not None:
        raise ConfigError("--cache works with greedy search and sampling, not with --beam")
    if ctx.guard is not None:
        raise ConfigError("--max-copy works with greedy search and sampling, not with --beam")
    rec = Recurrence(model, config.precision)
    end = tokenizer.end_id
    W, alpha, L = config.num_beams, config.length_penalty, config.max_new_tokens
    logits, layers = ctx.catch_up(rec)
    logits = logits.unsqueeze(0)  # [1, V]
    V = logits.shape[-1]
    device = logits.device
    seqs: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64, device=device)  # [k] summed log-probs of live beams
    seen = _seen_mask(ctx.ids, 1, V, device, end) if config.repetition_penalty != 1.0 else None
    finished = _Finished(W, alpha)
    track = Track(tokenizer, ctx.ids[-1], 1, config.stop_strings) if config.stop_strings else None

    for step in range(L):
        logp = torch.log_softmax(adjust_logits(logits, config, seen, step, end), dim=-1, dtype=torch.float64)  # [k, V]
        candidates = (scores[:, None] + logp).view(-1)  # [k * V]
        top_scores, top_index = candidates.topk(min(2 * W, candidates.numel()))
        ended, (beams, tokens, ranks, new_scores) = _rank(top_scores.tolist(), top_index.tolist(), V, W, end)
        for beam, score in ended:
            finished.add(score, seqs[beam], step + 1, "end")
        seqs = [seqs[b] + [t] for b, t in zip(beams, tokens)]
        if track is not None:
            beams, tokens, ranks, new_scores, seqs = _stop(track, finished, step + 1, beams, tokens, ranks,
                                                           new_scores, seqs)
        if step == L - 1 or not beams:
            for ids, score in zip(seqs, new_scores):
                finished.add(score, ids, L, "length")
            break
        if finished.beats(new_scores[0], step + 1):
            break
        index, chosen, at = torch.tensor([beams, tokens, ranks], device=device)  # one copy, not three
        layers = rec.select(layers, index)
        if seen is not None:
            seen = seen.index_select(0, index)
            seen[torch.arange(len(beams), device=device), chosen] = True
        scores = top_scores.index_select(0, at)  # = new_scores
        logits, layers = rec.step(chosen, layers)
    previous = ctx.ids[-1]
    return [Sample(ids, _cut(decode_continuation(tokenizer, ids, previous), stop, config), stop, score, norm)
            for norm, score, ids, stop in finished.best[: config.num_return_sequences]]


def _stop(track: Track, finished: _Finished, length: int, beams: list[int], tokens: list[int], ranks: list[int],
          scores: list[float], seqs: list[list[int]]) -> tuple[list, ...]:
    """The new beams (source beam, token, rank, score, ids: parallel lists) left once those
    whose text reached a stop string have finished."""
    track.reorder(beams)
    for row, token in enumerate(tokens):
        track.push(row, token)
        track.take(row)  # only the stops matter here: the text is decoded once at the end
    live = [i for i, done in enumerate(track.done) if not done]
    for i, done in enumerate(track.done):
        if done:
            finished.add(scores[i], seqs[i], length, track.stops[i])
    track.reorder(live)
    return tuple([values[i] for i in live] for values in (beams, tokens, ranks, scores, seqs))


def _cut(text: str, stop: str, config: GenerationConfig) -> str:
    """A stopped hypothesis's text ends with its first stop-string match."""
    hit = first_stop(text, config.stop_strings) if stop.startswith("stop:") else None
    return text if hit is None else text[: hit[0]]


class _Finished:
    """The W best finished hypotheses, best first: ``(normalised, score, ids, stop)``."""

    def __init__(self, width: int, alpha: float):
        self.width, self.alpha = width, alpha
        self.best: list[tuple[float, float, list[int], str]] = []

    def add(self, score: float, ids: list[int], length: int, stop: str) -> None:
        self.best.append((score / length**self.alpha, score, ids, stop))
        self.best.sort(key=lambda h: -h[0])
        del self.best[self.width :]

    def beats(self, score: float, length: int) -> bool:
        """Whether W hypotheses are finished and none is worse than a live beam of ``score``
        normalised at ``length``: the search can stop."""
        return len(self.best) >= self.width and score / length**self.alpha <= self.best[-1][0]


def _rank(top_scores: list[float], top_index: list[int], V: int, W: int,
          end: int) -> tuple[list[tuple[int, float]], tuple[list[int], list[int], list[int], list[float]]]:
    """The top 2W candidates, in order of score -> ``(ended, next)``: the (beam, score) of
    every [END] among the first W ranks, and the beam, token, rank and score of the next
    W beams (four lists)."""
    ended: list[tuple[int, float]] = []
    beams: list[int] = []
    tokens: list[int] = []
    ranks: list[int] = []  # of the new beams among the top 2W
    new_scores: list[float] = []
    for rank, (score, index) in enumerate(zip(top_scores, top_index)):
        beam, token = divmod(index, V)
        if token == end:
            if rank < W and score > -math.inf:
                ended.append((beam, score))
            continue
        if score == -math.inf:
            break
        beams.append(beam)
        tokens.append(token)
        ranks.append(rank)
        new_scores.append(score)
        if len(beams) == W:
            break
    return ended, (beams, tokens, ranks, new_scores)
