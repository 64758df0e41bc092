"""The text so far (:class:`Context`), how it starts (:func:`prime`), and what generation returns (:class:`Sample`).

Every generation starts from a Context: ``[END] + prompt`` run through the model once,
so a long prompt costs one fused call, and the REPL continues a text with its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..adaptive.cache import CacheConfig, TextCache
from ..errors import ConfigError
from ..files import physical_memory
from ..tokenizer import Tokenizer
from .recurrence import Recurrence


class Context:
    """A text (token ids, starting with ``[END]``) and the model state after it.

    Generation reads it and, for a single sample, moves it forward, so the next call
    continues the text with its state (what the REPL does on an empty line). Tokens
    appended but not yet fed (the last chosen one, a ``[END]``, new text) are fed on the
    next call: ``ids[fed:]``. ``unknown`` lists prompt symbols the vocabulary lacks (they
    became ``<unk>``).

    >>> ctx = prime(model, tok, "Once upon a")                       # doctest: +SKIP
    >>> "".join(stream(model, tok, ctx, GenerationConfig(max_new_tokens=20)))  # doctest: +SKIP
    """

    def __init__(self, ids: list[int], head: tuple[int, Any, Tensor | None], unknown: list[str] | None = None,
                 cache: TextCache | None = None):
        self.ids = ids
        # (fed, per-layer state, logits [V] after ids[:fed]) replaced in one assignment, so a
        # Ctrl-C between two statements can never leave state and logits out of step
        self.head = head
        self.unknown = unknown or []
        self.stop: str | None = None  # how the last generation ended: "end", "stop:STR", "length" or None
        # a continuous cache fed with every token of the text (generation samples its mixture), or None
        self.cache = cache
        # --max-copy: a lmgen.copycheck.CopyGuard that masks tokens copying too much training text, or None
        self.guard: Any = None

    @property
    def fed(self) -> int:
        return self.head[0]

    def extend(self, ids: Sequence[int]) -> None:
        """Append tokens to the text; they are fed to the model by the next generation."""
        self.ids.extend(int(i) for i in ids)

    def text(self, tokenizer: Tokenizer) -> str:
        """The whole text so far (the ``[END]`` it starts with renders as nothing)."""
        return tokenizer.decode(self.ids)

    def catch_up(self, rec: Recurrence) -> tuple[Tensor, Any]:
        """Feed the pending tokens; -> (logits [V], per-layer state) after all of ``ids``."""
        fed, layers, logits = self.head
        if fed < len(self.ids) or logits is None:
            pending = torch.tensor([self.ids[fed:]], dtype=torch.long, device=rec.device)  # [1, T]
            if self.cache is None:
                logits, layers = rec.run(pending, layers)
            else:
                logits, layers, outputs = rec.run(pending, layers, outputs=True)
                self.cache.observe(pending, outputs, start=fed)
            self.head = (len(self.ids), layers, logits)
        return logits, layers

    def state(self, model: Any) -> Any:
        """The model state ([L, 1, H] or (h, c)) after the fed tokens."""
        return Recurrence(model).join(self.head[1])


@torch.inference_mode()
def check_batch(model: Any, rows: int, max_new_tokens: int, flag: str) -> None:
    """Refuse, before allocating, a batch of ``rows`` that would not fit in a quarter of memory.

    A row costs, each step, its logits and probabilities (a few [V] float rows) and its
    state (L x H, LSTM twice, with temporaries), and keeps up to ``max_new_tokens`` ids as
    Python ints (~40 bytes each with the list slot), plus its own objects: a sample's
    torch.Generator (Mersenne-Twister state), text decoder and lists, ~6 KB (measured:
    100,000 samples of a tiny model took 530 MB more than 10,000).
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    have = physical_memory()
    if have is None:
        return
    per_row = 4 * (4 * cfg.vocab_size + 4 * cfg.layers * cfg.width) + 40 * max_new_tokens + 6000
    limit = max(1, have // 4 // per_row)
    if rows > limit:
        raise ConfigError(f"{flag} {rows:,} needs ~{rows * per_row / 2**30:,.1f} GiB for one batch "
                          f"({per_row:,} bytes a row); at most {limit:,} fit in a quarter of this machine's "
                          f"memory: lower {flag} or --max-new-tokens")


def prime(model: Any, tokenizer: Tokenizer, prompt: str = "", *, unknown: str = "replace",
          cache: CacheConfig | None = None) -> Context:
    """Run ``[END] + prompt`` through the model: the start of every generation.

    Starting with ``[END]`` puts the model where every training document starts, so an
    empty prompt samples a document from its beginning. Symbols the vocabulary lacks
    become ``<unk>`` and are listed in ``Context.unknown`` (``unknown="error"`` refuses
    them instead, naming them). With ``cache``, the context keeps a continuous cache of its
    text (:class:`~lmgen.adaptive.cache.TextCache`) and greedy search and sampling choose from
    the cache mixture (Grave et al. 2017).

    >>> ctx = prime(model, tok, "Hello")                               # doctest: +SKIP
    """
    if unknown not in ("replace", "error"):
        raise ValueError(f"unknown must be 'replace' or 'error', got {unknown!r}")
    missing = tokenizer.unknown_symbols(prompt) if prompt else []
    if missing and unknown == "error":
        raise ConfigError(f"the prompt has symbols this {tokenizer.kind} vocabulary lacks: "
                          f"{', '.join(map(repr, missing))}; remove or replace them")
    rec = Recurrence(model)
    text_cache = None
    if cache is not None:
        if not rec.fast:
            raise ConfigError("--cache needs an LSTM, GRU or RNN model (the cache stores their hidden states)")
        text_cache = TextCache(cache)
    ctx = Context([tokenizer.end_id] + tokenizer.encode(prompt), (0, None, None), missing, text_cache)
    ctx.catch_up(rec)
    return ctx


def as_context(model: Any, tokenizer: Tokenizer, prompt: str | Context) -> Context:
    """``prompt`` itself if it is a Context (generation continues it), else :func:`prime` of it."""
    return prompt if isinstance(prompt, Context) else prime(model, tokenizer, prompt)


@dataclass
class Sample:
    """One generated continuation."""

    ids: list[int]  # new token ids, without the [END] that ended it
    text: str  # their text (as it continues the prompt), cut right after a stop string's match
    # "end": [END] was produced; "stop:STR": the stop string STR matched; "length": max_new_tokens was reached
    stop: str
    score: float | None = None  # beam: summed log-probability of ids (and [END] if stop == "end")
    normalized: float | None = None  # beam: score / length ** length_penalty (what beams compete on)
    # the model's summed log-probability of ids (and [END] if stop == "end"), before the
    # repetition penalty, temperature, top-k and top-p; with a cache, the mixture's
    logprob: float | None = None

