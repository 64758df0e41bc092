"""Greedy and sampled generation: :func:`sample_steps` and the three ways to read it.

:func:`sample_steps` runs a batch of ``num_return_sequences`` rows, one token a step;
:func:`generate` returns whole :class:`Sample` objects (beam search included),
:func:`stream` one sample's text as it comes, :func:`stream_samples` several samples
computed as one batch, shown one after another.

>>> for piece in stream(model, tok, "The ", GenerationConfig(top_p=0.9), generator=g):  # doctest: +SKIP
...     print(piece, end="", flush=True)
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from ..errors import ConfigError
from ..generation import GenerationConfig
from ..tokenizer import Tokenizer
from .beam import beam_search
from .choose import _seen_mask, _Uniforms, adjust_logits, choose_tokens, sample_generators
from .context import Context, Sample, as_context, check_batch
from .recurrence import Recurrence
from .track import Track


def sample_steps(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    track: Track | None = None,
) -> Iterator[tuple[list[int], list[int]]]:
    """Greedy / sampled generation of ``num_return_sequences`` rows as one batch.

    Yields per step ``(rows, tokens)``: the rows still generating and the token each
    chose; a row that chose ``[END]`` is done and leaves the batch. With one row and a
    :class:`Context` as prompt, the context follows the text (see :meth:`Context.extend`).

    With ``track`` (a :class:`Track` of ``num_return_sequences`` rows), each token is pushed
    into it before the step is yielded, with its log-probability under the model (or the
    cache mixture) when ``track.scores``, and a row leaves the batch once the track has it
    done: at ``[END]`` or right after a stop string (``config.stop_strings``; without a
    track, one is made for them).

    >>> for rows, tokens in sample_steps(model, tok, "Hi", GenerationConfig(num_return_sequences=2)):  # doctest: +SKIP
    ...     print(rows, tokens)
    [0, 1] [5, 9]

    Not under ``torch.inference_mode`` as a whole: a generator so decorated enters and
    leaves the mode at every token, ~5 us of a ~300 us token here; the recurrence needs no
    autograd switch (see :meth:`Recurrence.step`).

    A context primed with a cache (``prime(..., cache=CacheConfig(N))``) chooses from the
    cache mixture (its log-probabilities stand for the logits); each sample has its own copy.
    """
    config = config or GenerationConfig()
    if config.strategy == "beam":
        raise ConfigError("sample_steps does greedy and sampling; use beam_search for --beam")
    check_batch(model, config.num_return_sequences, config.max_new_tokens, "--num-samples")
    ctx = as_context(model, tokenizer, prompt)
    follow = isinstance(prompt, Context) and config.num_return_sequences == 1
    rec = Recurrence(model, config.precision)
    end = tokenizer.end_id
    B = config.num_return_sequences
    logits, layers, cache = _start_batch(rec, ctx, B)  # [B, V]; cache None: the plain model, untouched below
    V = logits.shape[-1]
    device = logits.device
    noise = _Uniforms(sample_generators(generator, B), device) if config.strategy == "sample" else None
    seen = _seen_mask(ctx.ids, B, V, device, end) if config.repetition_penalty != 1.0 else None
    rows = list(range(B))
    guard = ctx.guard  # --max-copy: a lmgen.copycheck.CopyGuard, or None
    if guard is not None:
        guard.start(ctx.ids, B)
    if track is None and config.stop_strings:
        track = Track(tokenizer, ctx.ids[-1], B, config.stop_strings)
    if follow:
        ctx.stop = None
    for step in range(config.max_new_tokens):
        scores = logits if cache is None else cache.mix(logits)
        adjusted = adjust_logits(scores, config, seen, step, end)
        if guard is not None:  # tokens that would copy more than --max-copy training tokens in a row: -inf
            adjusted = guard.mask(adjusted)
        chosen = choose_tokens(adjusted, config, noise.next() if noise is not None else None)  # [B]
        if track is None:
            tokens = chosen.tolist()  # the one host sync per step: the caller prints them
            finished = [t == end for t in tokens]
        else:
            tokens = _push(track, rows, chosen, scores)
            finished = [track.done[r] for r in rows]
        if guard is not None:
            guard.push(tokens)
        if follow:
            ctx.extend(tokens)
            if finished[0]:
                ctx.stop = track.stops[0] if track is not None else "end"
        yield rows, tokens
        if step == config.max_new_tokens - 1:
            if track is not None:
                for row in rows:
                    track.finish(row)
            if follow and not finished[0]:
                ctx.stop = track.stops[0] if track is not None else "length"
            return
        if any(finished):  # those rows are done: drop them from the batch
            keep = [i for i, f in enumerate(finished) if not f]
            if not keep:
                return
            if guard is not None:
                guard.keep(keep)
            index = torch.tensor(keep, device=device)
            rows = [rows[i] for i in keep]
            chosen = chosen.index_select(0, index)
            layers = rec.select(layers, index)
            cache = cache.select(index) if cache is not None else None
            if noise is not None:
                noise.keep(keep, index)
            if seen is not None:
                seen = seen.index_select(0, index)
        if seen is not None:
            seen[torch.arange(len(rows), device=device), chosen] = True
        logits, layers = rec.step(chosen, layers)
        if cache is not None:  # the chosen token is the text's len(ids) - 1st (a followed context has it)
            cache.observe(chosen[:, None], rec.output(layers)[:, None], len(ctx.ids) - 1 if follow else cache.seen)
        if follow:
            ctx.head = (len(ctx.ids), layers, logits[0])


def _push(track: Track, rows: list[int], chosen: torch.Tensor, scores: torch.Tensor) -> list[int]:
    """Push each row's chosen token into the track -> the tokens (one host sync either way).

    The log-probability is the model's (the cache mixture's), before the repetition
    penalty, temperature, top-k and top-p reshaped it for choosing.
    """
    if not track.scores:
        tokens = chosen.tolist()
        for row, token in zip(rows, tokens):
            track.push(row, token)
        return tokens
    logp = torch.log_softmax(scores.double(), dim=-1).gather(1, chosen[:, None])[:, 0]  # [B]
    ids, logps = torch.stack([chosen.double(), logp]).tolist()  # token ids are exact in float64
    tokens = [int(t) for t in ids]
    for row, token, lp in zip(rows, tokens, logps):
        track.push(row, token, lp)
    return tokens


def _start_batch(rec: Recurrence, ctx: Context, B: int) -> tuple[torch.Tensor, Any, Any]:
    """The context caught up, then its next-token logits [B, V], layers and cache (or None)
    for B rows; B > 1 gives each row its own copy of the state and of the cache."""
    logits, layers = ctx.catch_up(rec)
    logits = logits.unsqueeze(0).expand(B, -1)  # [B, V]
    cache = ctx.cache
    if B > 1:
        layers = rec.repeat(layers, B)
        cache = cache.repeat(B) if cache is not None else None
    return logits, layers, cache


def generate(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    logprobs: bool = False,
) -> list[Sample]:
    """``num_return_sequences`` continuations of ``prompt`` (beam search: the n best).

    Each :class:`Sample` has its ids, text (ending with the stop string that stopped it)
    and stop reason; with ``logprobs`` also ``logprob``, the model's summed log-probability
    of its tokens (~10 % slower for one small model's stream, so only when asked).

    >>> greedy = GenerationConfig(do_sample=False, max_new_tokens=5)
    >>> [s.text for s in generate(model, tok, "The", greedy)]                # doctest: +SKIP
    [' cat ']
    """
    config = config or GenerationConfig()
    ctx = as_context(model, tokenizer, prompt)
    if config.strategy == "beam":
        samples = beam_search(model, tokenizer, ctx, config)
        for sample in samples if logprobs else []:
            sample.logprob = _logprob(model, ctx, sample.ids + ([tokenizer.end_id] if sample.stop == "end" else []))
        return samples
    B = config.num_return_sequences
    track = Track(tokenizer, ctx.ids[-1], B, config.stop_strings, scores=logprobs)  # before a followed context moves on
    for _ in sample_steps(model, tokenizer, ctx, config, generator=generator, track=track):
        pass
    return [Sample(track.ids[r], track.take(r), track.stops[r], logprob=track.logprobs[r] if logprobs else None)
            for r in range(B)]


@torch.no_grad()
def _logprob(model: Any, ctx: Context, ids: list[int]) -> float:
    """The model's summed log-probability of ``ids`` after the context (one fused call):
    beam search ranks with the repetition penalty and ``min_new_tokens``, not with this."""
    if not ids:
        return 0.0
    first, _ = ctx.catch_up(Recurrence(model))  # [V]: the logits before ids[0]
    tokens = torch.tensor([ids[:-1]], dtype=torch.long, device=first.device)  # [1, T-1]
    rest = model(tokens, ctx.state(model))[0][0] if len(ids) > 1 else first[:0]  # [T-1, V]
    logits = torch.cat([first[None].to(rest.dtype), rest])  # [T, V]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(logp.gather(1, torch.tensor(ids, device=logp.device)[:, None]).sum())


def stream(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    probs: bool = False,
) -> Iterator[str]:
    """One sample as text pieces, as they come; their concatenation is the sample's text.

    With a :class:`Context` as prompt, the context moves along: the next call continues.
    With ``probs``, each piece is a :class:`Piece`, a str that carries the model's
    probability of its token(s) (what ``:probs on`` colours by).

    >>> for piece in stream(model, tok, "Once", GenerationConfig(temperature=0.8)):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)
    """
    config = (config or GenerationConfig()).replace(num_return_sequences=1)
    ctx = as_context(model, tokenizer, prompt)
    track = Track(tokenizer, ctx.ids[-1], 1, config.stop_strings, scores=probs)
    for _ in sample_steps(model, tokenizer, ctx, config, generator=generator, track=track):
        yield from _taken(track, probs)
    yield from _taken(track, probs)


class Piece(str):
    """A piece of generated text that also carries ``prob``: the model's probability of the
    token(s) it came from (their product when several tokens make one piece)."""

    prob: float = 1.0


def _taken(track: Track, probs: bool) -> Iterator[str]:
    text, prob = track.take_scored(0)
    if text:
        if probs:
            piece = Piece(text)
            piece.prob = prob
            yield piece
        else:
            yield text


def stream_samples(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Iterator[tuple[int, str]]:
    """Several samples computed as one batch, shown one after another as they come.

    Yields ``(sample index, text piece)``: sample 0 live, then sample 1 (what it has
    so far at once, then live), and so on; each sample's pieces concatenate to its text.
    """
    config = config or GenerationConfig()
    check_batch(model, config.num_return_sequences, config.max_new_tokens, "--num-samples")  # before B decoders
    ctx = as_context(model, tokenizer, prompt)
    B = config.num_return_sequences
    track = Track(tokenizer, ctx.ids[-1], B, config.stop_strings)  # holds each sample's text until shown
    shown = 0  # the sample being shown
    for _ in sample_steps(model, tokenizer, ctx, config, generator=generator, track=track):
        while shown < B:
            piece = track.take(shown)
            if piece:
                yield shown, piece
            if not track.done[shown]:
                break
            shown += 1
    for row in range(shown, B):  # max_new_tokens reached: the rest at once
        piece = track.take(row)
        if piece:
            yield row, piece
