"""Token ids on disk and the stream batcher of truncated BPTT.

A corpus split is encoded once, streamed piece by piece, into a flat file of token ids
(uint16 when the vocabulary fits, else uint32) that is opened as a read-only
``numpy.memmap``: it is never held as a Python list, and a corpus larger than memory
works. Files are cached under ``$LMGEN_CACHE/tokens`` keyed by the corpus fingerprint,
the split and the tokenizer, so the second run starts at once. The fingerprint hashes the
corpus files' own content (registry files are verified against the registry's sha256 when
resolved), and an entry is kept only if no file changed while it was encoded: an altered
copy of a corpus can never be stored under the key of the real one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import corpora
from .cache import cache_folder
from .errors import ConfigError, LmgenError, TokenizerError
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer

CACHE_FORMAT = "lmgen-tokens/1"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return np.dtype(np.uint16)
    if vocab_size <= np.iinfo(np.uint32).max + 1:
        return np.dtype(np.uint32)
    raise TokenizerError(f"a vocabulary of {vocab_size} tokens does not fit in uint32 token ids; lower it")


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's saved files: two tokenizers with one fingerprint encode alike."""
    with tempfile.TemporaryDirectory() as tmp:
        names = sorted(tokenizer.save(Path(tmp)))
        digest = hashlib.sha256()
        for name in names:
            digest.update(name.encode())
            digest.update((Path(tmp) / name).read_bytes())
    return digest.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def prepare_tokenizer(corpus: corpora.Corpus, kind: str, **options: object) -> Tokenizer:
    """Build (or load from the cache) a tokenizer trained on ``corpus``'s training split."""
    options = {k: v for k, v in options.items() if v not in (None, 0)}
    folder = cache_folder() / "tokenizers" / f"{corpus.name}-{kind}-{_key(corpus.fingerprint, kind, options)}"
    if (folder / "tokenizer.json").exists():
        try:
            return load_tokenizer(folder)
        except LmgenError:
            pass  # a damaged cache entry is rebuilt below
    texts = (text for text, _ in corpus.pieces("train"))
    tokenizer = build_tokenizer(kind, texts, **options)
    corpus.check_unchanged()  # trained on the text the key names, or not cached
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    tokenizer.save(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its copy is as good as ours
        pass
    return tokenizer


@dataclass
class TokenFile:
    """The token ids of one split, memory-mapped, with what was counted while encoding."""

    path: Path
    tokens: np.ndarray  # [N] uint16/uint32 memmap
    chars: int  # characters of the raw text, document separators included
    documents: int
    unknown: int  # tokens that are <unk> because the tokenizer lacked the symbol

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def encode_split(corpus: corpora.Corpus, tokenizer: Tokenizer, split: str, *, progress: bool = False) -> TokenFile:
    """Encode one split of ``corpus`` to a cached memmap of token ids (``[END]`` after every document)."""
    if split not in corpus.splits:
        raise ConfigError(f"corpus {corpus.name!r} has no {split!r} split (it has: {', '.join(corpus.splits)})")
    dtype = token_dtype(tokenizer.vocab_size)
    key = _key(CACHE_FORMAT, corpus.fingerprint, split, tokenizer_fingerprint(tokenizer))
    folder = cache_folder() / "tokens"
    path = folder / f"{corpus.name}-{split}-{tokenizer.kind}-{key}.bin"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            return _open(path, meta)
        except (ValueError, KeyError, OSError):
            pass  # damaged cache entry: re-encode
    folder.mkdir(parents=True, exist_ok=True)
    chars = documents = unknown = count = 0
    end = np.array([tokenizer.end_id], dtype=dtype)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as out:
            for text, ends_document in corpus.pieces(split):
                ids = tokenizer.encode_array(text)
                unknown += int(np.count_nonzero(ids == tokenizer.unk_id))
                out.write(ids.astype(dtype).tobytes())
                count += len(ids)
                chars += len(text)
                if ends_document:
                    out.write(end.tobytes())
                    count += 1
                    chars += 1  # the separator ([END] stands for it) is a character of the raw text
                    documents += 1
            out.flush()
            os.fsync(out.fileno())
        meta = {"format": CACHE_FORMAT, "dtype": dtype.name, "tokens": count, "chars": chars,
                "documents": documents, "unknown": unknown}
        corpus.check_unchanged()  # the tokens are of the text the key names, or not cached
        os.replace(tmp_name, path)
        meta_path.write_text(json.dumps(meta))
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return _open(path, meta)


def _open(path: Path, meta: dict) -> TokenFile:
    if meta["tokens"] == 0:
        tokens = np.zeros(0, dtype=meta["dtype"])
    else:
        tokens = np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))
    return TokenFile(path, tokens, meta["chars"], meta["documents"], meta["unknown"])


class StreamBatcher:
    """Cut a token array into B contiguous streams and walk them in windows of T tokens.

    With N = 26 tokens ``a..z`` and B = 4, each stream gets L = N // B = 6 tokens
    (the remainder is dropped)::

        stream 0:  a b c d e f        window 0 (T = 2): inputs  a b | targets b c
        stream 1:  g h i j k l                          inputs  g h | targets h i
        stream 2:  m n o p q r        window 1:         inputs  c d | targets d e
        stream 3:  s t u v w x        ...

    Window k of every stream continues where window k-1 stopped, so the hidden state
    of stream b after window k-1 is the right state to start window k with: that is
    what lets truncated BPTT carry state (pytorch/examples ``batchify``, turned so that
    the batch is the first dimension).
    """

    def __init__(self, tokens: np.ndarray, batch: int, bptt: int):
        n = len(tokens)
        if n // batch < 2:
            most = max(1, n // 2)
            raise ConfigError(
                f"the split has {n} tokens, too few for --batch {batch} (each stream needs at least 2 tokens); "
                f"use --batch {most} or less, or a larger corpus"
            )
        self.batch, self.bptt = batch, bptt
        self.length = n // batch  # L tokens per stream
        self.streams = tokens[: batch * self.length].reshape(batch, self.length)  # [B, L], a view
        # Every window needs one extra token for its last target.
        self.num_windows = -(-(self.length - 1) // bptt)

    @property
    def tokens_per_pass(self) -> int:
        """Target tokens in one pass over every window."""
        return self.batch * (self.length - 1)

    def window(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of window ``k``: two int64 tensors [B, t] with t <= T."""
        assert 0 <= k < self.num_windows
        return self.span(k * self.bptt, self.bptt)

    def span(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of ``length`` tokens from token ``start`` of every stream: [B, t], t <= length.

        The window of variable-length BPTT (:class:`WindowLengths`); ``window(k)`` is
        ``span(k * T, T)``. The last one of a pass is cut short where the streams end.
        """
        assert 0 <= start < self.length - 1 and length >= 1
        stop = min(start + length, self.length - 1)
        chunk = torch.from_numpy(np.ascontiguousarray(self.streams[:, start : stop + 1]).astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self):
        for k in range(self.num_windows):
            yield self.window(k)


class WindowLengths:
    """How long each window of truncated BPTT is: T, or drawn around T per batch (``--bptt-jitter`` σ).

    With σ > 0, as AWD-LSTM (Merity et al. 2018, section 4.1) does: a base of T, or T/2
    with probability 5 %, plus N(0, σ²) tokens, rounded, at least 5 and at most 2T. Every
    start offset of the streams then gets trained on across epochs, not only multiples of
    T. The draws come from a generator of their own, seeded by ``seed``: every rank draws
    the same lengths, and its state (:meth:`state_dict`) is part of ``train_state.pt``, so
    a resumed run draws what the interrupted one would have.

    >>> lengths = WindowLengths(bptt=70, jitter=5.0, seed=0)
    >>> all(5 <= lengths.draw() <= 140 for _ in range(100))
    True
    >>> WindowLengths(bptt=70).draw()
    70
    """

    SHORT = 0.05  # the chance of a T/2 base
    SHORTEST = 5

    def __init__(self, bptt: int, jitter: float = 0.0, seed: int = 0):
        self.bptt, self.jitter = bptt, jitter
        self.generator = torch.Generator().manual_seed(seed) if jitter else None
        self.longest = max(2 * bptt, self.SHORTEST) if jitter else bptt

    def draw(self) -> int:
        """The next window's length (T when fixed; no draw is made then)."""
        if self.generator is None:
            return self.bptt
        short, noise = torch.rand(1, generator=self.generator).item(), torch.randn(1, generator=self.generator).item()
        base = self.bptt / 2 if short < self.SHORT else self.bptt
        return min(max(self.SHORTEST, int(round(base + self.jitter * noise))), self.longest)

    def per_epoch(self, stream_length: int) -> int:
        """Windows in one pass over streams of ``stream_length`` tokens (expected, when drawn).

        The mean draw, (1 - 5 %) T + 5 % T/2, sets the step budget of ``--epochs``; the
        clamping to [5, 2T] is left out of it.
        """
        mean = self.bptt if self.generator is None else max(self.SHORTEST, (1 - self.SHORT / 2) * self.bptt)
        return math.ceil((stream_length - 1) / mean)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's state: empty for fixed windows (nothing is drawn)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the draws that :meth:`state_dict` saved (a fixed-window save leaves the seeded start)."""
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
