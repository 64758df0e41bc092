"""Generation: prime the state with the prompt, then feed each chosen token back.

Strategies (names as in Hugging Face ``generate``, see :class:`GenerationConfig`): greedy,
ancestral sampling with ``temperature``, ``top_k``, ``top_p`` (nucleus), beam search
(``num_beams``, ``length_penalty``, ``num_return_sequences`` best), and an optional
``repetition_penalty``. Randomness comes only from an injected ``torch.Generator``.

The flow of one call::

    "[END]" + prompt ──prime──► Context(state, logits)        once, O(len(prompt))
                                   │
              ┌────────────────────┴─────────────────────┐
              ▼                                          ▼
    choose a token per row [B]                 beam: top 2W of W x V
    (greedy / temperature / top-k / top-p)     candidates, [END] ones finish
              │                                          │
    feed it back: one recurrent step with      reorder the W states, step
    the carried state, O(1) per token          ...until W finished beat the rest
              │
    a row that chose [END] (not printed) leaves the batch; the others go on

Sample ``i`` of a batch draws its random numbers from its own generator (seeded from
the injected one), so its text is the same whether it was generated alone or with
others, and whatever its batch-mates do.

>>> model, tok = lmgen.load("checkpoints/run")                       # doctest: +SKIP
>>> g = torch.Generator().manual_seed(0)                              # doctest: +SKIP
>>> for piece in stream(model, tok, "The ", GenerationConfig(top_p=0.9), generator=g):  # doctest: +SKIP
...     print(piece, end="", flush=True)

The package, by job (each module imports only those above it)::

    recurrence.py  the model unrolled one token per call: float32 and packed float16 step engines
    context.py     the text so far and its state (Context, prime); Sample, what generation returns
    choose.py      logits -> tokens: repetition penalty, greedy, temperature, top-k, top-p
    beam.py        beam_search
    track.py       each row's text, stop strings, stop reason and log-probability (Track)
    generate.py    sample_steps, generate, stream, stream_samples
    textfiles.py   prompt files and stdin (read_prompt); atomic writes (write_text)
    records.py     samples as JSON-lines records (sample_records, write_records)
    session.py     the REPL's logic (lmgen.repl is only its I/O)

:class:`~lmgen.generation.GenerationConfig` lives in :mod:`lmgen.generation`,
the cell maths in :mod:`lmgen.cells`, and :class:`~lmgen.tokenizer.TextDecoder` (text as
it streams) in :mod:`lmgen.tokenizer`.
"""

from __future__ import annotations

from ..generation import FLAGS, PRECISIONS, GenerationConfig, config_from_flags
from .beam import beam_search
from .choose import adjust_logits, choose_tokens, sample_generators
from .context import Context, Sample, prime
from .generate import generate, sample_steps, stream, stream_samples
from .records import SampleRecord, read_records, sample_records, write_records
from .recurrence import Recurrence, half_supported
from .session import REPL_HELP, Session
from .textfiles import read_prompt
from .track import Track

__all__ = [
    "FLAGS", "PRECISIONS", "GenerationConfig", "config_from_flags",
    "Recurrence", "half_supported",
    "Context", "Sample", "prime",
    "adjust_logits", "choose_tokens", "sample_generators",
    "sample_steps", "generate", "stream", "stream_samples",
    "beam_search",
    "Track", "SampleRecord", "sample_records", "write_records", "read_records", "read_prompt",
    "REPL_HELP", "Session",
]
