"""The text features of the neuron atlas: hypotheses ("predicates") and trivial controls.

A **predicate** says, for every character of a text, whether it is inside something: a
URL, a string literal, a parenthesis. Each is a regular expression (inside = the
characters of every match) or a function ``text -> bool [len(text)]``, with one sentence
that documents it. Some have a **hard** variant: the positions where telling inside from
outside is hard (URL characters against other long non-space runs), as
``benchmarks/url_neuron.py`` does for URLs.

A **control** is a trivial per-character number that a unit might merely copy: the
column, the run length, a bracket counter. The atlas scores every control with the same
protocol as the units; a unit is interesting only when it beats the best of them. A
predicate lists the controls that *define* it (``defines``): "column >= 40" is the column
counter thresholded, so the column counter is left out of its controls.

    >>> PREDICATES["comment"].mask("x = 1  # one\\n").astype(int).tolist()
    [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    >>> controls("a(b)")["paren_depth"].tolist()
    [0, 1, 1, 0]

A unit's value at a character is read *after* the model has read it, so "inside" means
inside after reading the character: an opening delimiter (a quote, a bracket) is inside,
the closing one is not (after it the string or bracket is closed). The predicates depend
only on the text up to the character, except where the doc says otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ConfigError
from .probe import URL_REGEX, WIKILINK_REGEX, long_runs, run_length

Mask = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Predicate:
    """One hypothesis about the text: ``pattern`` (a regex) or ``function`` gives the mask."""

    name: str
    doc: str  # one sentence: what "inside" means
    pattern: str | None = None
    function: Mask | None = None
    hard: Mask | None = None  # positions of the hard variant (look-alikes), or None
    hard_doc: str = ""
    defines: tuple[str, ...] = ()  # controls that are this predicate's own definition
    closing: bool = False  # a regex match ends with a closing delimiter: its last character is outside

    def __post_init__(self):
        if (self.pattern is None) == (self.function is None):
            raise ConfigError(f"predicate {self.name!r}: give exactly one of pattern= and function=")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ConfigError(f"predicate {self.name!r}: invalid regular expression: {e}") from None

    def mask(self, text: str) -> np.ndarray:
        """Boolean [len(text)], True inside (may be all False: the atlas then skips it)."""
        if self.function is not None:
            mask = np.asarray(self.function(text), dtype=bool)
            if mask.shape != (len(text),):
                raise ConfigError(f"predicate {self.name!r} returned shape {mask.shape}, "
                                  f"the text has {len(text)} characters")
            return mask
        return regex_chars(text, self.pattern, closing=self.closing)


def regex_chars(text: str, pattern: str, *, closing: bool = False) -> np.ndarray:
    """Boolean [len(text)]: the characters of every match (all False when none matches);
    with ``closing``, each match's last character (its closing delimiter) left out."""
    mask = np.zeros(len(text), dtype=bool)
    for m in re.finditer(pattern, text):
        mask[m.start() : m.end() - (1 if closing else 0)] = True
    return mask


# -- counters the predicates and controls share ----------------------------------------------


def _chars(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def column(text: str) -> np.ndarray:
    """Per character: its 0-based column (characters since the last line break)."""
    codes = _chars(text)
    idx = np.arange(len(text))
    last_nl = np.maximum.accumulate(np.where(codes == ord("\n"), idx, -1))
    # a line break itself ends its line: its column counts from the previous one
    prev = np.concatenate([[-1], last_nl[:-1]])
    return idx - np.where(codes == ord("\n"), prev, last_nl) - 1


def indentation(text: str) -> np.ndarray:
    """Per character: the indentation (leading spaces and tabs) of its line, as far as read
    so far (causal: inside the leading whitespace it is the count up to here)."""
    out = np.zeros(len(text), dtype=np.int64)
    pos = 0
    for line in text.split("\n"):
        lead = len(line) - len(line.lstrip(" \t"))
        width = len(line) + 1 if pos + len(line) < len(text) else len(line)
        cols = np.arange(width)
        out[pos : pos + width] = np.minimum(cols + 1, lead) if lead else 0
        pos += width
    return out


def depth(text: str, opening: str, closing: str) -> np.ndarray:
    """Per character: how many ``opening`` brackets are open after reading it (an opening
    bracket counts itself, a closing one does not). Never below zero (a stray closing
    bracket is ignored), and back to zero at a blank line: one unbalanced bracket (a "["
    in a string) spoils one paragraph, not the rest of the text."""
    out = np.zeros(len(text), dtype=np.int64)
    d = 0
    for i, ch in enumerate(text):
        if ch == "\n" and i and text[i - 1] == "\n":
            d = 0
        if ch == opening:
            d += 1
        elif ch == closing:
            d = max(d - 1, 0)
        out[i] = d
    return out


def quote_parity(text: str, quote: str) -> np.ndarray:
    """Per character: 1 when an odd number of ``quote`` characters precede it on its line
    (the quote itself included), else 0."""
    codes = _chars(text)
    is_quote = (codes == ord(quote)).astype(np.int64)
    counts = np.cumsum(is_quote)
    line_start = np.maximum.accumulate(np.where(codes == ord("\n"), np.arange(len(text)), -1))
    before = np.where(line_start >= 0, counts[np.maximum(line_start, 0)], 0)
    return (counts - before) % 2


def python_lexer(text: str) -> dict[str, np.ndarray]:
    """Masks of Python string literals (from the opening quote to the closing one, which is
    left out: after it the string is closed), triple-quoted strings, and comments ('#' to
    the end of the line, outside strings), by one left-to-right scan.

    >>> m = python_lexer("s = 'a#b'  # c")
    >>> "".join("s" if v else "." for v in m["string"]), "".join("#" if v else "." for v in m["comment"])
    ('....ssss......', '...........###')
    """
    n = len(text)
    string, triple, comment = (np.zeros(n, dtype=bool) for _ in range(3))
    i = 0
    while i < n:
        ch = text[i]
        if ch == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            comment[i:j] = True
            i = j
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            j, closed = i + len(quote), False
            while j < n:
                if text[j] == "\\":
                    j += 2
                elif text.startswith(quote, j):
                    j, closed = j + len(quote), True
                    break
                elif len(quote) == 1 and text[j] == "\n":  # unterminated: a one-line string ends here
                    break
                else:
                    j += 1
            j = min(j, n)
            string[i : j - closed] = True
            if len(quote) == 3:
                triple[i : j - closed] = True
            i = j
        else:
            i += 1
    return {"string": string, "triple": triple, "comment": comment}


def _lines_with(chars: str) -> Mask:
    def where(text: str) -> np.ndarray:
        mask = np.zeros(len(text), dtype=bool)
        pos = 0
        for line in text.split("\n"):
            if any(c in line for c in chars):
                mask[pos : pos + len(line)] = True
            pos += len(line) + 1
        return mask

    return where


def _letters(text: str) -> np.ndarray:
    return np.array([c.isalpha() for c in text], dtype=bool)


def _indented(at_least: int) -> Mask:
    def mask(text: str) -> np.ndarray:
        out = np.zeros(len(text), dtype=bool)
        pos = 0
        for line in text.split("\n"):
            body = line.lstrip(" \t")
            if body and len(line) - len(body) >= at_least:
                out[pos + len(line) - len(body) : pos + len(line)] = True
            pos += len(line) + 1
        return out

    return mask


# -- the library -------------------------------------------------------------------------------

_P = Predicate
LIBRARY: tuple[Predicate, ...] = (
    _P("url", "inside a URL (scheme:// or www., then non-space characters other than markup delimiters).",
       pattern=URL_REGEX, hard=lambda t: long_runs(t, 8), hard_doc="inside non-space runs of >= 8 characters"),
    _P("wikilink", "inside a wiki link [[...]] on one line, from its first bracket to its last (left out).",
       pattern=WIKILINK_REGEX, closing=True, hard=_lines_with("["), hard_doc="lines with a '['"),
    _P("double_quotes", 'inside "double quotes" on one line, from the opening quote to the closing one (left out).',
       pattern=r'"[^"\n]*"', closing=True, hard=_lines_with('"'), hard_doc="lines with a '\"'",
       defines=("dquote_parity",)),
    _P("parentheses", "inside parentheses (depth >= 1 after the character), counted since the last blank line.",
       function=lambda t: depth(t, "(", ")") >= 1, hard=_lines_with("()"), hard_doc="lines with a parenthesis",
       defines=("paren_depth",)),
    _P("nested_parentheses", "inside parentheses inside parentheses (depth >= 2).",
       function=lambda t: depth(t, "(", ")") >= 2, hard=lambda t: depth(t, "(", ")") >= 1,
       hard_doc="inside parentheses", defines=("paren_depth",)),
    _P("square_brackets", "inside square brackets [...] (depth >= 1 after the character).",
       function=lambda t: depth(t, "[", "]") >= 1, defines=("bracket_depth",)),
    _P("curly_braces", "inside curly braces {...} (depth >= 1 after the character).",
       function=lambda t: depth(t, "{", "}") >= 1, defines=("brace_depth",)),
    _P("string_literal", "inside a Python string literal ('...', \"...\", triple-quoted), the closing quote left out.",
       function=lambda t: python_lexer(t)["string"], hard=_lines_with("\"'"), hard_doc="lines with a quote"),
    _P("docstring", "inside a triple-quoted string (a docstring, usually several lines long).",
       function=lambda t: python_lexer(t)["triple"], hard=lambda t: python_lexer(t)["string"],
       hard_doc="inside string literals"),
    _P("comment", "inside a Python comment: from '#' (outside strings) to the end of the line.",
       function=lambda t: python_lexer(t)["comment"], hard=_lines_with("#"), hard_doc="lines with a '#'"),
    _P("indent_4", "on a line indented by >= 4 columns (code in a block), from its first non-space character.",
       function=_indented(4), defines=("indent",)),
    _P("indent_8", "on a line indented by >= 8 columns (a nested block), from its first non-space character.",
       function=_indented(8), hard=_indented(4), hard_doc="lines indented by >= 4", defines=("indent",)),
    _P("column_40", "at column >= 40 of its line (position in the line).",
       function=lambda t: column(t) >= 40, defines=("column",)),
    _P("digits", "a digit 0-9.", pattern=r"[0-9]+"),
    _P("capitalised_word", "inside a capitalised word (one capital, then lower-case letters: 'The', 'Return').",
       pattern=r"(?<![A-Za-z0-9_])[A-Z][a-z]+(?![A-Za-z0-9_])", hard=_letters, hard_doc="letters"),
    _P("sentence_end", "the space or line break right after a sentence's final full stop, '!' or '?' "
       "(which follows a lower-case letter, a quote or a bracket).",
       pattern=r"(?<=[a-z)\"'][.!?])\s"),
    _P("word_start", "the first letter of a word (a letter not preceded by a letter, digit, _ or ').",
       pattern=r"(?<![A-Za-z0-9_'])[A-Za-z]", hard=_letters, hard_doc="letters"),
    _P("xml_tag", "inside an XML/HTML tag <...> on one line, the closing '>' left out.", pattern=r"<[^<>\n]*>",
       closing=True),
)
PREDICATES: dict[str, Predicate] = {p.name: p for p in LIBRARY}


# -- the trivial controls ---------------------------------------------------------------------

CONTROL_DOCS = {
    "run_length": "characters since the last whitespace",
    "column": "characters since the last line break",
    "indent": "indentation of the current line",
    "paren_depth": "open ( minus ) after the character",
    "bracket_depth": "open [ minus ] after the character",
    "brace_depth": "open { minus } after the character",
    "dquote_parity": "odd number of \" so far on the line",
    "squote_parity": "odd number of ' so far on the line",
    "token": "P(inside | the current token), counted on part A",
}


def controls(text: str) -> dict[str, np.ndarray]:
    """Every text-only control of :data:`CONTROL_DOCS` per character (float64 [len(text)]);
    the "token" control needs the predicate and is the atlas's."""
    return {
        "run_length": run_length(text),
        "column": column(text),
        "indent": indentation(text),
        "paren_depth": depth(text, "(", ")"),
        "bracket_depth": depth(text, "[", "]"),
        "brace_depth": depth(text, "{", "}"),
        "dquote_parity": quote_parity(text, '"'),
        "squote_parity": quote_parity(text, "'"),
    }


def select(names: str | list[str] | None) -> list[Predicate]:
    """Predicates by name (a comma-separated string or a list); None = the whole library."""
    if names is None:
        return list(LIBRARY)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in PREDICATES]
    if unknown:
        raise ConfigError(f"unknown predicate {unknown[0]!r}; choose from {', '.join(PREDICATES)}")
    if not names:
        raise ConfigError("no predicate given; choose from " + ", ".join(PREDICATES))
    return [PREDICATES[n] for n in names]
