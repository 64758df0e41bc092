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

from ..config import GenerationConfig
from ..errors import ConfigError
from ..tokenizer import TextDecoder, Tokenizer, decode_continuation
from .beam import beam_search
from .choose import _seen_mask, _Uniforms, adjust_logits, choose_tokens, sample_generators
from .context import Context, Sample, as_context, check_batch
from .recurrence import Recurrence


def sample_steps(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Iterator[tuple[list[int], list[int]]]:
    """Greedy / sampled generation of ``num_return_sequences`` rows as one batch.

    Yields per step ``(rows, tokens)``: the rows still generating and the token each
    chose; a row that chose ``[END]`` is done and leaves the batch. With one row and a
    :class:`Context` as prompt, the context follows the text (see :meth:`Context.extend`).

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
    if follow:
        ctx.stop = None
    for step in range(config.max_new_tokens):
        scores = logits if cache is None else cache.mix(logits)
        chosen = choose_tokens(adjust_logits(scores, config, seen, step, end), config,
                               noise.next() if noise is not None else None)  # [B]
        tokens = chosen.tolist()  # the one host sync per step: the caller prints them
        if follow:
            ctx.extend(tokens)
            if tokens[0] == end:
                ctx.stop = "end"
        yield rows, tokens
        if step == config.max_new_tokens - 1:
            if follow:
                ctx.stop = "length"
            return
        if end in tokens:  # those rows are done: drop them from the batch
            keep = [i for i, t in enumerate(tokens) if t != end]
            if not keep:
                return
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
) -> list[Sample]:
    """``num_return_sequences`` continuations of ``prompt`` (beam search: the n best).

    >>> greedy = GenerationConfig(do_sample=False, max_new_tokens=5)
    >>> [s.text for s in generate(model, tok, "The", greedy)]                # doctest: +SKIP
    [' cat ']
    """
    config = config or GenerationConfig()
    ctx = as_context(model, tokenizer, prompt)
    if config.strategy == "beam":
        return beam_search(model, tokenizer, ctx, config)
    B = config.num_return_sequences
    previous = ctx.ids[-1]  # before a followed context moves on
    ids: list[list[int]] = [[] for _ in range(B)]
    stops = ["length"] * B
    for rows, tokens in sample_steps(model, tokenizer, ctx, config, generator=generator):
        for row, token in zip(rows, tokens):
            if token == tokenizer.end_id:
                stops[row] = "end"
            else:
                ids[row].append(token)
    return [Sample(i, decode_continuation(tokenizer, i, previous), s) for i, s in zip(ids, stops)]


def stream(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """One sample as text pieces, as they come; their concatenation is the sample's text.

    With a :class:`Context` as prompt, the context moves along: the next call continues.

    >>> for piece in stream(model, tok, "Once", GenerationConfig(temperature=0.8)):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)
    """
    config = (config or GenerationConfig()).replace(num_return_sequences=1)
    ctx = as_context(model, tokenizer, prompt)
    decoder = TextDecoder(tokenizer, previous=ctx.ids[-1])
    for _, tokens in sample_steps(model, tokenizer, ctx, config, generator=generator):
        if tokens[0] == tokenizer.end_id:
            break
        piece = decoder.push(tokens[0])
        if piece:
            yield piece
    piece = decoder.flush()
    if piece:
        yield piece


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
    decoders = [TextDecoder(tokenizer, previous=ctx.ids[-1]) for _ in range(B)]
    buffers: list[list[str]] = [[] for _ in range(B)]
    done = [False] * B
    shown = 0  # the sample being shown
    for rows, tokens in sample_steps(model, tokenizer, ctx, config, generator=generator):
        for row, token in zip(rows, tokens):
            if token == tokenizer.end_id:
                done[row] = True
            else:
                buffers[row].append(decoders[row].push(token))
        while shown < B:
            if buffers[shown]:
                piece = "".join(buffers[shown])
                buffers[shown] = []
                if piece:
                    yield shown, piece
            if not done[shown]:
                break
            piece = decoders[shown].flush()
            if piece:
                yield shown, piece
            shown += 1
    for row in range(shown, B):  # max_new_tokens reached: the rest at once
        piece = "".join(buffers[row]) + decoders[row].flush()
        if piece:
            yield row, piece
