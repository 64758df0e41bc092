"""The interactive session of ``lmgen repl``: all its logic, none of its I/O.

:class:`Session` holds the settings, the random numbers and the text so far; it parses
the ``:commands`` (tables below) and generates. :mod:`lmgen.repl` only reads lines,
calls it and prints.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..adaptive.cache import CacheConfig
from ..config import MAX_SEED
from ..errors import ConfigError
from ..generation import PRECISIONS, GenerationConfig, config_from_flags
from ..intervene import Edit, intervene, parse_action, parse_assignment, parse_unit, resolve
from ..tokenizer import Tokenizer, decode_continuation
from .beam import beam_search
from .context import Context, prime
from .generate import stream
from .recurrence import Recurrence
from .textfiles import write_text
from .track import unescape

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
  :cache N [θ [λ]]  sample from a continuous cache of the last N states of the text (from the next prompt);
                   :cache off
  :adapt on|off    learn from the text you type (dynamic evaluation); off keeps what was learned
  :adapt reset     the trained weights again, exactly
  :score TEXT      log-probability of TEXT as a new document, under the current weights
  :pick N          the N most likely next tokens with their probabilities: type a number to add
                   that token, or your own text ('1984 adds the text 1984); an empty line ends it
  :probs on|off    colour each generated token by the model's probability of it
                   (green >= 70%, yellow >= 30%, magenta >= 10%, red below; not on a plain output)
  :stop STR        also stop right after STR in the generated text (\\n: newline); :stop off: none
  :clamp UNIT=V    set a unit to V at every step from now on, e.g. :clamp L0.c[43]=2.5 (=*0.5 scales it)
  :ablate UNIT     set a unit to 0 at every step      :clear [UNIT]  drop the :clamp/:ablate of one unit, or all
  :save FILE       save the text so far to FILE (:save! FILE replaces a file this session did not write)
  :show            the current settings
  :reset           forget the text (the next one starts a new document; :adapt keeps what it learned)
  :help            this help                      :quit  leave (or Ctrl-D)
A line ending with \\ goes on on the next line; lines pasted at once are one prompt.
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
# :probs colours: a token's probability -> the first band it reaches
PROB_BANDS = ((0.7, "green"), (0.3, "yellow"), (0.1, "magenta"), (0.0, "red"))


def probability_band(p: float) -> str:
    """The ``:probs`` colour of a token of probability ``p``.

    >>> probability_band(0.5)
    'yellow'
    """
    return next((name for floor, name in PROB_BANDS if p >= floor), PROB_BANDS[-1][1])
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
                 cache: CacheConfig | None = None, adapt: LiveAdaptation | None = None, copy_guard: Any = None,
                 interventions: list[Edit] | None = None):
        self._model = model
        # :clamp / :ablate (lmgen.intervene), by unit; in force while the model reads or writes
        self.edits = {e.unit: e for e in resolve(model, interventions or [])}
        self.copy_guard = copy_guard  # --max-copy (a lmgen.copycheck.CopyGuard) for every text, or None
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
            "precision": config.precision, "stop_strings": config.stop_strings,
        }
        self.probs = False  # :probs on: generated pieces carry their probabilities (lmgen.repl colours them)
        self.picking: int | None = None  # :pick N: the N of the pick in progress
        self.saved: set[Path] = set()  # files :save wrote: saving to them again needs no :save!
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
                      min_new_tokens=s["min_new_tokens"], precision=s["precision"], stop_strings=s["stop_strings"])
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
        stops = f"; stop at {', '.join(map(repr, s['stop_strings']))}" if s["stop_strings"] else ""
        probs = "; probabilities shown" if self.probs else ""
        edits = f"; interventions {', '.join(map(str, self.edits.values()))}" if self.edits else ""
        return (f"{how}; repetition penalty {s['repetition_penalty']:g}; max {s['max_new_tokens']} "
                f"(min {s['min_new_tokens']}) new tokens{stops}; weights {s['precision']}; seed {self.seed}"
                f"{probs}{edits}; {text}{extra}")

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
        if name == "cache":
            return self._cache(value)
        if name == "score":
            return self._score(value)
        if name == "pick":
            return self.start_pick(value)
        if name == "probs":
            if value.lower() not in ("on", "off"):
                raise ConfigError(f":probs takes on or off, got {value!r}")
            self.probs = value.lower() == "on"
            return self.show()
        if name == "stop":
            return self._stop(value)
        if name in ("clamp", "ablate", "clear"):
            return self._intervene(name, value)
        if name in ("save", "save!"):
            return self.save(value, overwrite=name == "save!")
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
        with self._intervened():
            yield from self._generate(text, continue_text)

    def _cache(self, value: str) -> str:
        """``:cache N [theta [lambda]]`` or ``:cache off``: the cache of the texts that follow.

        A text is primed into its cache as it is read, so a new setting starts with the next
        prompt; an empty line continues the current text with the cache it has."""
        if value.lower() == "off":
            self.cache = None
            return "cache off (from the next prompt)"
        parts = value.split()
        if not 1 <= len(parts) <= 3:
            raise ConfigError(f":cache takes N [theta [lambda]] or off, got {value!r}")
        try:
            size, numbers = int(parts[0]), [float(p) for p in parts[1:]]
        except ValueError:
            raise ConfigError(f":cache takes N [theta [lambda]] or off, got {value!r}") from None
        base = CacheConfig(size)
        self.cache = CacheConfig(size, *(numbers + [base.theta, base.lam][len(numbers):]))
        return f"cache {self.cache.describe()} (from the next prompt)"

    def _intervened(self) -> Any:
        """:clamp and :ablate in force on the model (nothing at all when there are none)."""
        return intervene(self.model, list(self.edits.values()))

    def _intervene(self, name: str, value: str) -> str:
        """``:clamp UNIT=VALUE``, ``:ablate UNIT``, ``:clear [UNIT]``."""
        if name == "clear":
            value = "L{}.{}[{}]".format(*parse_unit(value)) if value else ""
            if value and value not in self.edits:
                raise ConfigError(f"{value} has no :clamp or :ablate to clear; set: {', '.join(self.edits) or 'none'}")
            self.edits = {u: e for u, e in self.edits.items() if value and u != value}
            return self.show()
        if not value:
            raise ConfigError(f":{name} needs a unit, e.g. :{name} L0.c[43]{'=2.5' if name == 'clamp' else ''}")
        unit, action = parse_assignment(value) if name == "clamp" else (value, parse_action("zero"))
        if action == "mean":
            raise ConfigError(f":clamp {unit}=mean needs the unit's mean: give it as a number, e.g. :clamp {unit}=0.3")
        edit = resolve(self.model, {unit: action})[0]  # says which layers, kinds and indices exist
        self.edits = {u: e for u, e in self.edits.items() if u != edit.unit} | {edit.unit: edit}
        return self.show()

    def _generate(self, text: str | None, continue_text: bool) -> Iterator[str]:
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
        self.context.guard = self.copy_guard
        if config.strategy == "beam" and self.context.cache is not None:
            raise ConfigError("--cache works with greedy search and sampling, not with :beam")
        if config.strategy == "beam":
            best = beam_search(self.model, self.tokenizer, self.context, config)[0]
            self.context.extend(best.ids + ([self.tokenizer.end_id] if best.stop == "end" else []))
            self.context.stop = best.stop
            yield best.text
        else:
            yield from stream(self.model, self.tokenizer, self.context, config, generator=self.generator,
                              probs=self.probs)

    # -- :pick, :stop, :save -----------------------------------------------------------

    def top(self, n: int) -> list[tuple[int, str, float]]:
        """The ``n`` most likely next tokens after the text so far, most likely first:
        ``(id, the text it adds, probability)``. The model's probabilities (with a cache, the
        mixture's), before temperature, top-k, top-p and the repetition penalty."""
        with self._intervened():
            ctx = self._text_so_far()
            logits, _ = ctx.catch_up(Recurrence(self.model, self.settings["precision"]))  # [V]
        scores = logits[None] if ctx.cache is None else ctx.cache.mix(logits[None])  # [1, V]
        probs, ids = torch.softmax(scores[0].double(), dim=-1).topk(n)
        end = self.tokenizer.end_id
        return [(t, "[END]" if t == end else decode_continuation(self.tokenizer, [t], ctx.ids[-1]), p)
                for t, p in zip(ids.tolist(), probs.tolist())]

    def start_pick(self, value: str) -> str:
        """``:pick N``: the table of the N most likely next tokens; answers go to :meth:`answer_pick`."""
        V = self.tokenizer.vocab_size
        if not re.fullmatch(r"[0-9]+", value):
            raise ConfigError(f":pick needs a whole number N, e.g. :pick 5, got {value!r}")
        if not 1 <= int(value) <= V:
            raise ConfigError(f":pick N must be in [1, {V}] (the vocabulary's size), got {value}")
        self.picking = int(value)
        return self._pick_table()

    def answer_pick(self, answer: str) -> str:
        """One answer to ``:pick``: a number adds that token; other text is added as typed
        (``'12`` adds the text 12); an empty line ends the pick, as does a ``:command``, which runs."""
        assert self.picking is not None, "answer_pick without :pick"
        typed = answer.strip()
        if not typed or typed.startswith(":"):
            self.picking = None
            return self.handle(typed) if typed else "done picking; an empty line continues the text"
        note = ""
        if re.fullmatch(r"[0-9]+", typed):
            candidates = self.top(self.picking)
            if not 1 <= int(typed) <= len(candidates):
                raise ConfigError(f"pick a number from 1 to {len(candidates)}, or type text ('{typed} adds it)")
            self._text_so_far().extend([candidates[int(typed) - 1][0]])
        else:
            text = answer.replace("'", "", 1) if re.fullmatch(r"'[0-9]+", typed) else answer
            if self.adaptation is not None:  # as :continue TEXT: learn what the writer typed
                self.adaptation.learn(self.tokenizer.encode(text), self.tokenizer.end_id)
            missing = self.tokenizer.unknown_symbols(text)
            note = f"note: the vocabulary lacks {', '.join(map(repr, missing))}; they became <unk>\n" if missing else ""
            self._text_so_far().extend(self.tokenizer.encode(text))
        self._text_so_far().stop = None
        return note + self._pick_table()

    def _pick_table(self) -> str:
        assert self.picking is not None
        ctx = self._text_so_far()
        text = ctx.text(self.tokenizer)
        lines = [f"text so far: {'...' if len(text) > 60 else ''}{text[-60:]!r}"]
        for i, (_, piece, p) in enumerate(self.top(self.picking), 1):
            lines.append(f"  {i:>3}. {piece if piece == '[END]' else repr(piece):<14} {p:8.2%}")
        lines.append(f"type 1-{self.picking} to add that token, or text to add it; an empty line ends :pick")
        return "\n".join(lines)

    def _text_so_far(self) -> Context:
        if self.context is None:
            self.context = prime(self.model, self.tokenizer, "", cache=self.cache)
        return self.context

    def _stop(self, value: str) -> str:
        """``:stop STR`` adds a stop string (quotes keep spaces at its ends); ``:stop off`` drops them all."""
        if not value:
            raise ConfigError(":stop needs a string, e.g. :stop \\n or :stop \". \" (:stop off: none)")
        if value.lower() in ("off", "none"):
            stops: tuple[str, ...] = ()
        else:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            if not unescape(value):
                raise ConfigError(":stop needs a non-empty string")
            stops = self.settings["stop_strings"] + (unescape(value),)
        self.settings = dict(self.settings, stop_strings=stops)
        return self.show()

    def save(self, target: str, overwrite: bool = False) -> str:
        """``:save FILE``: the text so far (prompts included) and a final newline, written
        atomically. A file this session did not write is replaced only with ``:save!``."""
        if not target:
            raise ConfigError(":save needs a file name, e.g. :save story.txt")
        path = Path(target).expanduser()
        if path.exists() and not path.is_dir() and not overwrite and path.resolve() not in self.saved:
            raise ConfigError(f"{target} exists; :save! {target} replaces it")
        text = self.context.text(self.tokenizer) if self.context is not None else ""
        written = write_text(path, text + "\n" if text else "", ":save")
        self.saved.add(written.resolve())
        return f"saved {len(text):,} characters to {written}"

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
        with torch.no_grad(), self._intervened():
            logp, _ = target_log_probs(self.model, seq[:, :-1], seq[:, 1:], None)
        total, n = float(logp.sum()), len(ids) - 1
        return f"log p = {total:.4f} nats over {n} tokens ({-total / n:.4f} nats/token) under the current weights"
