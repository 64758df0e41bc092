"""Named text corpora: a registry, a built-in default, a local mirror, fetching with sha256.

    >>> from lmgen import corpora
    >>> corpus = corpora.resolve()              # "python-stdlib": offline, on every machine
    >>> corpus.splits
    ('train', 'valid', 'test')
    >>> for text, ends_document in corpus.pieces("train"):
    ...     ...                                  # ends_document -> the tokenizer emits [END]

A corpus is a stream of *documents*: its separator ("line", "blank", "file", "none", or for
your own files a regular expression) says what ends one, and its split rule ("files",
"chars", "bytes" or "documents") how train/valid/test are cut. The package, one job per
file, each importing only those above it:

    registry.py   the named corpora: files, URLs, sha256, split rule, separator
    reading.py    streaming UTF-8 reads: files -> (text, ends_document) pieces
    verify.py     sha256 of every registry file against the registry, recorded per file version
    download.py   the mirror and cache folders; fetch: copy or download, verify, unpack (capped)
    documents.py  your own files: which are text, and whole documents drawn to splits
    corpus.py     Corpus (splits, text, fingerprint)
    lookup.py     resolve: a registry name, a file or a folder -> Corpus

Only the standard library is used here (no torch), so ``lmgen corpus list`` is instant.
"""

from lmgen.cache import CACHE_ENV, cache_folder

from .corpus import Corpus
from .download import fetch, mirror_folder
from .lookup import resolve, resolve_options
from .registry import (
    DEFAULT_CORPUS,
    MIRROR_ENV,
    REGISTRY,
    SPLIT_NAMES,
    CorpusSpec,
    RemoteFile,
    list_corpora,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_CORPUS",
    "MIRROR_ENV",
    "REGISTRY",
    "SPLIT_NAMES",
    "Corpus",
    "CorpusSpec",
    "RemoteFile",
    "cache_folder",
    "fetch",
    "list_corpora",
    "mirror_folder",
    "resolve",
    "resolve_options",
]
