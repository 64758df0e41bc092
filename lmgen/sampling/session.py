"""The interactive session of ``lmgen repl``: all its logic, none of its I/O.

:class:`Session` holds the settings, the random numbers and the text so far; it parses
the ``:commands`` (tables below) and generates. :mod:`lmgen.repl` only reads lines,
calls it and prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..adaptive.cache import CacheConfig
from ..config import MAX_SEED, PRECISIONS, GenerationConfig, config_from_flags
from ..errors import ConfigError
from ..tokenizer import Tokenizer
from .beam import beam_search
from .context import Context, prime
from .generate import stream
from .recurrence import Recurrence

if TYPE_CHECKING:
    from ..adaptive.dynamic import LiveAdaptation

REPL_HELP = """\
Type a prompt and press Enter: its continuation streams below it (a new document).
An empty line (or :continue) continues the text so far with its state.
  :continue TEXT   append TEXT to the text so far, then continue
  :temp T          sample with temperature T > 0            (also :temperature)
  :top-k K         sample among the K most likely tokens    (:top-k off: all)
  :top-p P         sample from the nucleus of mass P in (0, 1]
  :sample          sample (with the settings above)
  :greedy          always take the most likely token
  :beam W          beam search of width W (shown when done)
  :length-penalty A  beam: rank by log-prob / length**A
  :repetition-penalty R  penalise tokens already in the text (1: off)
  :max N           stop after N new tokens        :min N  no [END] before N tokens
  :seed N          restart the random numbers from seed N
  :precision P     step weights: float16 (fast, CPU), float32 (exact) or auto
  :adapt on|off    learn from the text you type (dynamic evaluation); off keeps what was learned
  :adapt reset     the trained weights again, exactly
  :score TEXT      log-probability of TEXT as a new document, under the current weights
  :show            the current settings
  :reset           forget the text (the next one starts a new document; :adapt keeps what it learned)
  :help            this help                      :quit  leave (or Ctrl-D)
Ctrl-C stops a generation and returns to the prompt."""

# repl command -> (setting, parser); the setting names are config_from_flags' keywords
_REPL_VALUES = {
    "temp": "temperature", "temperature": "temperature", "t": "temperature",
    "top-k": "top_k", "topk": "top_k", "k": "top_k",
    "top-p": "top_p", "topp": "top_p", "p": "top_p",
    "beam": "beam",
    "length-penalty": "length_penalty", "lp": "length_penalty",
    "repetition-penalty": "repetition_penalty", "rep": "repetition_penalty",
    "max": "max_new_tokens", "max-new-tokens": "max_new_tokens",
    "min": "min_new_tokens", "min-new-tokens": "min_new_tokens",
    "seed": "seed",
}
_INTS = {"top_k", "beam", "max_new_tokens", "min_new_tokens", "seed"}
# flags in validation messages -> the repl command that sets them
_REPL_NAMES = {"--temperature": ":temp", "--top-k": ":top-k", "--top-p": ":top-p", "--beam": ":beam",
               "--length-penalty": ":length-penalty", "--repetition-penalty": ":repetition-penalty",
               "--max-new-tokens": ":max", "--min-new-tokens": ":min", "--greedy": ":greedy"}


class Session:
    """The state of an interactive session: settings, random numbers, the text so far.

    ``lmgen repl`` only reads lines, calls :meth:`handle` or :meth:`generate`, and prints.

    >>> s = Session(model, tok)                                        # doctest: +SKIP
    >>> s.handle(":temp 0.7")                                          # doctest: +SKIP
    'temperature 0.7 (sampling)'
    >>> print("".join(s.generate("Once")))                             # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Tokenizer, config: GenerationConfig | None = None, seed: int = 0, *,
                 cache: CacheConfig | None = None, adapt: LiveAdaptation | None = None):
        self._model = model
        self.tokenizer = tokenizer
        self.cache = cache  # each text gets a continuous cache (sampling from its mixture)
        self.adaptation = adapt  # :adapt; None: not available
        config = config or config_from_flags()
        self.mode = config.strategy
        self.settings: dict[str, Any] = {
            "temperature": config.temperature if config.strategy == "sample" else 0.8,
            "top_k": config.top_k, "top_p": config.top_p,
            "beam": config.num_beams if config.num_beams > 1 else 4, "length_penalty": config.length_penalty,
            "repetition_penalty": config.repetition_penalty,
            "max_new_tokens": config.max_new_tokens, "min_new_tokens": config.min_new_tokens,
            "precision": config.precision,
        }
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.context: Context | None = None
        self.quit = False

    @property
    def model(self) -> Any:
        """The weights generation uses: the adapted ones while :adapt has changed them."""
        return self.adaptation.model if self.adaptation is not None else self._model

    @property
    def config(self) -> GenerationConfig:
        return self._config(self.mode, self.settings)

    @staticmethod
    def _config(mode: str, s: dict[str, Any]) -> GenerationConfig:
        common = dict(repetition_penalty=s["repetition_penalty"], max_new_tokens=s["max_new_tokens"],
                      min_new_tokens=s["min_new_tokens"], precision=s["precision"])
        if mode == "beam":
            return GenerationConfig(num_beams=s["beam"], do_sample=False, length_penalty=s["length_penalty"], **common)
        return GenerationConfig(do_sample=mode == "sample", temperature=s["temperature"], top_k=s["top_k"],
                                top_p=s["top_p"], **common)

    def show(self) -> str:
        """The current settings, one line."""
        s = self.settings
        if self.mode == "sample":
            how = f"sampling: temperature {s['temperature']:g}, top-k {s['top_k'] or 'off'}, top-p {s['top_p']:g}"
        elif self.mode == "beam":
            how = f"beam search: width {s['beam']}, length penalty {s['length_penalty']:g}"
        else:
            how = "greedy"
        text = f"{len(self.context.ids) - 1} tokens of text" if self.context else "no text yet"
        extra = (f"; cache {self.cache.describe()}" if self.cache else "") + (
            f"; {self.adaptation.describe()}" if self.adaptation is not None and self.adaptation.adapter else "")
        return (f"{how}; repetition penalty {s['repetition_penalty']:g}; max {s['max_new_tokens']} "
                f"(min {s['min_new_tokens']}) new tokens; weights {s['precision']}; seed {self.seed}; {text}{extra}")

    def handle(self, line: str) -> str:
        """Run one ``:command``; returns what to print. Raises ConfigError (message for
        the user, settings unchanged) on an unknown command or a bad value."""
        name, _, value = line.strip()[1:].partition(" ")
        name, value = name.lower(), value.strip()
        if name in ("quit", "q", "exit"):
            self.quit = True
            return "bye"
        if name in ("help", "h", "?"):
            return REPL_HELP
        if name == "show":
            return self.show()
        if name == "reset":
            self.context = None
            self.generator = torch.Generator().manual_seed(self.seed)
            return f"text forgotten; random numbers restarted from seed {self.seed}"
        if name in ("greedy", "sample"):
            self.mode = name
            return self.show()
        if name == "adapt":
            return self._adapt(value.lower())
        if name == "score":
            return self._score(value)
        if name == "precision":
            if value not in PRECISIONS:
                raise ConfigError(f":precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
            Recurrence(self.model, value)  # refuses float16 where it cannot run, naming why
            self.settings = dict(self.settings, precision=value)
            return self.show()
        if name not in _REPL_VALUES:
            raise ConfigError(f"unknown command :{name}")
        key = _REPL_VALUES[name]
        if not value:
            raise ConfigError(f":{name} needs a value, e.g. :{name} {'5' if key in _INTS else '0.9'}")
        try:
            parsed: Any = None if (key == "top_k" and value.lower() in ("off", "none", "0")) else (
                int(value) if key in _INTS else float(value))
        except ValueError:
            raise ConfigError(f":{name} needs a {'whole ' if key in _INTS else ''}number, got {value!r}") from None
        if key == "seed":
            if not 0 <= parsed <= MAX_SEED:
                raise ConfigError(f":seed must be a whole number in [0, 2^63), got {value}")
            self.seed = parsed
            self.generator = torch.Generator().manual_seed(parsed)
            return f"seed {parsed}"
        settings = dict(self.settings, **{key: parsed})
        mode = {"temperature": "sample", "top_k": "sample", "top_p": "sample", "beam": "beam",
                "length_penalty": "beam"}.get(key, self.mode)
        try:
            self._config(mode, settings)
        except ConfigError as exc:
            message = str(exc)
            for flag_name, command in _REPL_NAMES.items():
                message = message.replace(flag_name, command)
            raise ConfigError(message) from None
        self.settings, self.mode = settings, mode
        return self.show()

    def generate(self, text: str | None = None, *, continue_text: bool = False) -> Iterator[str]:
        """Text pieces: ``text`` itself, then its continuation as it comes.

        ``text`` starts a new document unless ``continue_text`` (or ``text`` is empty /
        None), which continues the text so far with its state. After it, ``self.context``
        holds the text and state; stopping early (Ctrl-C) keeps what was generated.
        Check :attr:`unknown` for prompt symbols that became ``<unk>``.
        """
        self.unknown: list[str] = []
        if text and self.adaptation is not None:  # learn the typed text first: its continuation leans towards it
            self.adaptation.learn(self.tokenizer.encode(text), self.tokenizer.end_id)
        if text and not continue_text:
            self.context = prime(self.model, self.tokenizer, text, cache=self.cache)
            self.unknown = self.context.unknown
            yield text
        else:
            if self.context is None:
                self.context = prime(self.model, self.tokenizer, "", cache=self.cache)
            elif self.context.ids[-1] == self.tokenizer.end_id and len(self.context.ids) > 1:
                yield "\n"  # the last document ended: a new one starts on its own line
            if text:
                self.unknown = self.tokenizer.unknown_symbols(text)
                self.context.extend(self.tokenizer.encode(text))
                yield text
        config = self.config
        if config.strategy == "beam" and self.context.cache is not None:
            raise ConfigError("--cache works with greedy search and sampling, not with :beam")
        if config.strategy == "beam":
            best = beam_search(self.model, self.tokenizer, self.context, config)[0]
            self.context.extend(best.ids + ([self.tokenizer.end_id] if best.stop == "end" else []))
            self.context.stop = best.stop
            yield best.text
        else:
            yield from stream(self.model, self.tokenizer, self.context, config, generator=self.generator)

    def _adapt(self, value: str) -> str:
        """``:adapt on|off|reset``."""
        if value not in ("on", "off", "reset"):
            raise ConfigError(f":adapt takes on, off or reset, got {value!r}")
        if self.adaptation is None:
            raise ConfigError(":adapt is not available: this session has no gradient statistics of the training data")
        if value == "reset":
            self.adaptation.reset()
            return "the trained weights again (bit for bit); " + self.adaptation.describe()
        self.adaptation.switch(value == "on")
        return self.adaptation.describe()

    def _score(self, text: str) -> str:
        """``:score TEXT``: log p(TEXT) as a new document under the current weights."""
        from ..evaluate import _device_of, target_log_probs

        if not text:
            raise ConfigError(":score needs a text, e.g. :score The cat sat.")
        ids = [self.tokenizer.end_id] + self.tokenizer.encode(text)
        seq = torch.tensor([ids], dtype=torch.long, device=_device_of(self.model))
        with torch.no_grad():
            logp, _ = target_log_probs(self.model, seq[:, :-1], seq[:, 1:], None)
        total, n = float(logp.sum()), len(ids) - 1
        return f"log p = {total:.4f} nats over {n} tokens ({-total / n:.4f} nats/token) under the current weights"
