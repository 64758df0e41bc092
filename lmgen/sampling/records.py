"""Samples as records: what ``lmgen sample --out samples.jsonl`` writes, one JSON object a line.

>>> records = sample_records(model, tok, "Once", GenerationConfig(num_return_sequences=3), seed=1)  # doctest: +SKIP
>>> write_records(records, "samples.jsonl")                                  # doctest: +SKIP
>>> records[0].stop, records[0].tokens                                       # doctest: +SKIP
('end', 212)

A line of the file::

    {"index": 0, "text": " upon a time...", "prompt": "Once", "seed": 1, "tokens": 212,
     "ids": [...], "logprob": -301.52, "stop": "end"}
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..generation import GenerationConfig
from ..tokenizer import Tokenizer
from .context import Context, Sample
from .generate import generate
from .textfiles import write_text


@dataclass
class SampleRecord:
    """One sample of a run, as written to ``--out``."""

    index: int  # the sample's number in its run, from 0 (beam search: its rank)
    text: str  # the generated text, without the prompt; it ends with the stop string that stopped it
    prompt: str
    seed: int  # the run's --seed: the same seed, settings and index give the same text
    tokens: int  # how many tokens were generated ([END] not counted)
    ids: list[int]  # their ids
    logprob: float | None  # summed log-probability (nats) of the tokens and the [END] that ended it, if any
    stop: str  # "end" ([END] was chosen), "stop:STR" (stop string STR matched) or "length" (--max-new-tokens)

    @classmethod
    def of(cls, sample: Sample, index: int, prompt: str, seed: int) -> SampleRecord:
        logprob = sample.logprob if sample.logprob is not None and math.isfinite(sample.logprob) else None
        return cls(index, sample.text, prompt, seed, len(sample.ids), list(sample.ids), logprob, sample.stop)

    def to_json(self) -> str:
        """One line of JSON (non-ASCII text kept as it is)."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, allow_nan=False)


def sample_records(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str = "",
    config: GenerationConfig | None = None,
    *,
    seed: int = 0,
    context: Context | None = None,
) -> list[SampleRecord]:
    """``config.num_return_sequences`` samples continuing ``prompt``, as records with their
    log-probabilities; the texts are those ``lmgen sample --seed SEED`` prints.

    ``context``: the prompt already primed (:func:`~lmgen.sampling.prime`, e.g. with a
    cache); ``prompt`` is then only recorded.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = generate(model, tokenizer, context if context is not None else prompt, config, generator=generator,
                       logprobs=True)
    return [SampleRecord.of(s, i, prompt, seed) for i, s in enumerate(samples)]


def write_records(records: Sequence[SampleRecord], path: str | Path, flag: str = "--out") -> Path:
    """Write the records as JSON lines, atomically (the old file or the whole new one)."""
    return write_text(path, "".join(r.to_json() + "\n" for r in records), flag)


def read_records(path: str | Path) -> list[SampleRecord]:
    """The records of a file :func:`write_records` wrote."""
    with open(path, encoding="utf-8") as f:
        return [SampleRecord(**json.loads(line)) for line in f if line.strip()]
