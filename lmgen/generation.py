"""How ``lmgen sample`` and ``lmgen repl`` choose each next token: :class:`GenerationConfig`.

Its fields are named as in Hugging Face's ``generate``; :func:`config_from_flags` builds
it from the commands' flags and refuses combinations that would be silently ignored.
Validation at construction names the flag the user typed (:data:`FLAGS`). The model's and
training's configs are :mod:`lmgen.config`'s.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

MAX_BEAMS = 1024  # each beam step ranks 2W candidates in Python
MAX_LENGTH_PENALTY = 10.0  # length ** penalty: beyond this, scores overflow or vanish for long texts

# Field -> command-line flag, so validation names the flag the user typed.
FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "min_new_tokens": "--min-new-tokens",
    "do_sample": "--greedy",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "num_beams": "--beam",
    "length_penalty": "--length-penalty",
    "repetition_penalty": "--repetition-penalty",
    "num_return_sequences": "--num-samples",
    "precision": "--precision",
    "stop_strings": "--stop",
}
PRECISIONS = ("float32", "float16", "auto")


@dataclass
class GenerationConfig:
    """How to choose each next token (names as in Hugging Face ``generate``).

    The strategy follows from the fields: ``num_beams > 1`` is beam search,
    otherwise ``do_sample`` samples (with ``temperature``, ``top_k``, ``top_p``) and
    ``do_sample=False`` is greedy. Validation at construction names the CLI flag:

    >>> GenerationConfig(top_p=1.5)
    Traceback (most recent call last):
    lmgen.errors.ConfigError: --top-p must be in (0, 1], got 1.5
    >>> GenerationConfig(num_beams=4, num_return_sequences=2).strategy
    'beam'
    """

    max_new_tokens: int = 500  # stop after this many new tokens ([END] included)
    min_new_tokens: int = 0  # [END] cannot be chosen before this many new tokens
    do_sample: bool = True  # False: greedy (the most likely token)
    temperature: float = 1.0  # divide logits by this before softmax (> 0)
    top_k: int | None = None  # sample among the k most likely tokens (None: all)
    top_p: float = 1.0  # sample among the fewest most likely tokens whose mass reaches p
    num_beams: int = 1  # beam width W (1: no beam search)
    length_penalty: float = 1.0  # beam: rank by score / length ** length_penalty
    repetition_penalty: float = 1.0  # CTRL penalty on tokens already in the text (1: off)
    num_return_sequences: int = 1  # samples per call, or the n best beams
    # weights of the step-by-step recurrence: "float32" (the model's own numbers), "float16"
    # (CPU: packed half-precision weights, float32 arithmetic; 2-3x faster for one stream)
    # or "auto" (float16 where supported, else float32). See :class:`lmgen.sampling.Recurrence`.
    precision: str = "float32"
    # stop right after the first match of any of these in the generated text, found across
    # token boundaries (Hugging Face's stop_strings); the text ends with the match
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):  # one string, as Hugging Face also takes it
            self.stop_strings = (self.stop_strings,)
        elif isinstance(self.stop_strings, (list, tuple)):
            self.stop_strings = tuple(self.stop_strings)

        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{FLAGS[name]} must be {rule}, got {getattr(self, name)!r}")

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def real(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        check(whole(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens", "a whole number >= 1")
        check(whole(self.min_new_tokens) and 0 <= self.min_new_tokens, "min_new_tokens", "a whole number >= 0")
        check(real(self.temperature) and self.temperature > 0, "temperature",
              "> 0 (use --greedy for the most likely token)")
        check(self.top_k is None or (whole(self.top_k) and self.top_k >= 1), "top_k", "a whole number >= 1")
        check(real(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]")
        check(whole(self.num_beams) and 1 <= self.num_beams <= MAX_BEAMS, "num_beams",
              f"a whole number in [1, {MAX_BEAMS}]")
        check(real(self.length_penalty) and abs(self.length_penalty) <= MAX_LENGTH_PENALTY, "length_penalty",
              f"a number in [-{MAX_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}]")
        check(real(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", "> 0")
        check(whole(self.num_return_sequences) and self.num_return_sequences >= 1, "num_return_sequences",
              "a whole number >= 1")
        check(self.precision in PRECISIONS, "precision", "one of " + ", ".join(PRECISIONS))
        check(isinstance(self.stop_strings, tuple) and all(isinstance(s, str) and s for s in self.stop_strings),
              "stop_strings", "non-empty strings")
        if self.num_beams > 1:
            sampling = [FLAGS[n] for n, on in (("temperature", self.temperature != 1.0),
                                                ("top_k", self.top_k is not None),
                                                ("top_p", self.top_p != 1.0)) if on]
            if sampling:
                raise ConfigError(f"beam search is deterministic: {', '.join(sampling)} cannot be used with --beam")
            if self.num_return_sequences > self.num_beams:
                raise ConfigError(f"--num-samples must be <= --beam (the n best of {self.num_beams} beams), "
                                  f"got {self.num_return_sequences}")

    @property
    def strategy(self) -> str:
        """``"beam"``, ``"sample"`` or ``"greedy"``."""
        return "beam" if self.num_beams > 1 else "sample" if self.do_sample else "greedy"

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for humans, e.g. ``sample temperature=0.8 top_p=0.95 max_new_tokens=500``."""
        parts = [self.strategy]
        if self.strategy == "sample":
            parts.append(f"temperature={self.temperature:g}")
            if self.top_k is not None:
                parts.append(f"top_k={self.top_k}")
            if self.top_p < 1:
                parts.append(f"top_p={self.top_p:g}")
        if self.strategy == "beam":
            parts += [f"num_beams={self.num_beams}", f"length_penalty={self.length_penalty:g}"]
        if self.repetition_penalty != 1:
            parts.append(f"repetition_penalty={self.repetition_penalty:g}")
        parts.append(f"max_new_tokens={self.max_new_tokens}")
        if self.min_new_tokens:
            parts.append(f"min_new_tokens={self.min_new_tokens}")
        parts.append(f"num_return_sequences={self.num_return_sequences}")
        if self.precision != "float32":
            parts.append(f"precision={self.precision}")
        if self.stop_strings:
            parts.append(f"stop_strings={list(self.stop_strings)!r}")
        return " ".join(parts)


def config_from_flags(
    *,
    greedy: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    beam: int | None = None,
    length_penalty: float | None = None,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 500,
    min_new_tokens: int = 0,
    num_samples: int = 1,
    default_temperature: float = 0.8,
    precision: str = "float32",
) -> GenerationConfig:
    """The config that ``lmgen sample`` / ``lmgen repl`` flags ask for (``None``: not given).

    Refuses flags that would be silently ignored, e.g. ``--greedy --temperature 0.5``.

    >>> config_from_flags(top_p=0.9).describe()
    'sample temperature=0.8 top_p=0.9 max_new_tokens=500 num_return_sequences=1'
    """
    sampling = [name for name, value in (("--temperature", temperature), ("--top-k", top_k),
                                         ("--top-p", top_p)) if value is not None]
    if greedy and beam is not None:
        raise ConfigError("--greedy and --beam exclude each other (--beam 1 is greedy)")
    if (greedy or beam is not None) and sampling:
        raise ConfigError(f"{', '.join(sampling)} only apply to sampling; drop them or drop "
                          f"{'--greedy' if greedy else '--beam'}")
    if length_penalty is not None and beam is None:
        raise ConfigError("--length-penalty only applies to beam search; add --beam WIDTH")
    if beam is not None:  # GenerationConfig checks the width
        return GenerationConfig(num_beams=beam, do_sample=False,
                                length_penalty=1.0 if length_penalty is None else length_penalty,
                                repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                                min_new_tokens=min_new_tokens, num_return_sequences=num_samples,
                                precision=precision)
    return GenerationConfig(
        do_sample=not greedy,
        temperature=default_temperature if temperature is None or greedy else temperature,
        top_k=top_k, top_p=1.0 if top_p is None else top_p, repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_return_sequences=num_samples,
        precision=precision,
    )
