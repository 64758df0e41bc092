"""What a user typed -> a :class:`~lmgen.corpora.corpus.Corpus`: :func:`resolve`.

    None             the built-in default, python-stdlib (no files needed, offline)
    a registry name  its files from the mirror or the cache (see download.py), or fetched;
                     each verified by sha256 against the registry first (verify.py)
    a text file      one document, split 90/5/5 by characters
    a folder         its text files, recursively and sorted, one document each, 90/5/5
    either, with     documents ended by each line, blank lines or a regex, and whole
    a separator      documents drawn to train/valid/test (the "documents" rule, documents.py)
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from lmgen.errors import CorpusError

from .corpus import Corpus
from .documents import DOCUMENTS, check_fractions, text_files
from .download import fetch, find_local, local_places
from .reading import NAMED_SEPARATORS, check_errors, has_text, separator_pattern
from .registry import DEFAULT_CORPUS, MIRROR_ENV, REGISTRY, SPLIT_NAMES, STDLIB_CAP_BYTES, CorpusSpec, did_you_mean
from .verify import Verified, verify_file

# The held-out shares of a user's file: 90/5/5, as nanoGPT splits shakespeare_char.
USER_FRACTIONS = (0.05, 0.05)


def resolve(
    name_or_path: str | os.PathLike | None = None,
    *,
    mirror: str | os.PathLike | None = None,
    download: bool = False,
    errors: str = "strict",
    separator: str = "none",
    valid_fraction: float | None = None,
    test_fraction: float | None = None,
    split_seed: int = 0,
) -> Corpus:
    """Find a corpus by registry name, or read a text file or folder as one.

    None gives DEFAULT_CORPUS ("python-stdlib", no files needed). A registry name is looked
    for in ``mirror`` (default $LMGEN_CORPORA), then the cache folder, and fetched when
    ``download``. Any other string is a path: a file is one document split 90/5/5 by
    characters; a folder's text files (recursive, sorted; hidden, binary and non-text files
    skipped) are one document each, split 90/5/5 by characters. ``errors="replace"`` reads
    bytes that are not UTF-8 as U+FFFD instead of raising.

    For a path only (a registry corpus keeps its published splits and refuses these):
    ``separator`` "line", "blank" or a regular expression cuts it into documents, and whole
    documents are drawn to the splits by ``split_seed`` (documents.py); the fractions (default
    0.05 each) are of documents then, of characters with "none".

        >>> resolve("tinyshakespeare").splits
        ('train', 'valid')
        >>> resolve("names.txt", separator="line", split_seed=1).rule()  # doctest: +SKIP
        'documents 90/5/5 (seed 1)'
    """
    check_errors(errors)
    if name_or_path is None:
        name_or_path = DEFAULT_CORPUS
    valid = USER_FRACTIONS[0] if valid_fraction is None else valid_fraction
    test = USER_FRACTIONS[1] if test_fraction is None else test_fraction
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        if separator != "none" or (valid, test) != USER_FRACTIONS:
            raise CorpusError(
                f"{name_or_path!r} is a registry corpus with its own documents and splits; --separator, "
                f"--valid-fraction and --test-fraction are for your own text files (give a file's path)"
            )
        return _resolve_named(REGISTRY[name_or_path], mirror=mirror, download=download, errors=errors)
    path = Path(name_or_path).expanduser()
    if path.is_file() or path.is_dir():
        if separator == "file":
            raise CorpusError("--separator file: use none (a file, or each file of a folder, is one document); "
                              "for a regular expression matching the text 'file', write (?:file)")
        if separator not in NAMED_SEPARATORS:
            separator_pattern(separator)
        check_fractions(valid, test)
        rule = {"fractions": (round(1.0 - valid - test, 12), valid, test), "seed": split_seed, "errors": errors}
        if separator == "none":
            rule["split"] = "chars"  # as before separators existed: the same splits and token caches
        else:
            rule.update(split=DOCUMENTS, separator=separator)
        return _resolve_file(path, rule) if path.is_file() else _resolve_folder(path, rule)
    text = str(name_or_path)
    known = ", ".join(REGISTRY)
    hint = did_you_mean(text)
    raise CorpusError(
        f"unknown corpus {text!r}: not a registered name and no such file or folder.{hint} "
        f"Known corpora: {known}; or give the path of a text file or folder."
    )


def _resolve_named(spec: CorpusSpec, *, mirror, download: bool, errors: str) -> Corpus:
    if spec.builtin:
        return _builtin_corpus(spec, errors)
    places = local_places(mirror)
    found = find_local(spec, places)
    if found is not None:
        location, folder = found
        return _named_corpus(spec, folder, location, errors)
    if download:
        folder = fetch(spec, mirror=mirror)
        return _named_corpus(spec, folder, "cache", errors)
    looked = "; ".join(f"{loc} {root / spec.folder}" for loc, root in places if root is not None)
    if not any(f.url for f in spec.files):
        how = (
            f"it has no download URL: set {MIRROR_ENV}=DIR to a corpora mirror holding "
            f"{spec.folder}/{spec.files[0].name}"
        )
    else:
        how = (
            f"run `lmgen corpus fetch {spec.name}` (or resolve(..., download=True)) to download it, "
            f"or set {MIRROR_ENV}=DIR to a corpora mirror holding {spec.folder}/"
        )
    raise CorpusError(f"corpus {spec.name!r} is not on this machine (looked in: {looked}); {how}")


def _named_corpus(spec: CorpusSpec, folder: Path, location: str, errors: str) -> Corpus:
    """The corpus in ``folder``, every file verified by size and sha256 (see verify.py)."""
    paths = [folder / f.name for f in spec.files]
    verified = {p: verify_file(spec, f, p, location) for f, p in zip(spec.files, paths)}
    split_files = None
    if spec.split == "files":
        assert spec.split_files is not None
        split_files = {s: [folder / spec.split_files[s]] for s in SPLIT_NAMES if s in spec.split_files}
    return _spec_corpus(spec, paths, location, errors, split_files, verified)


def _spec_corpus(
    spec: CorpusSpec, paths: list[Path], location: str, errors: str, split_files: dict | None = None,
    verified: dict[Path, Verified] | None = None,
) -> Corpus:
    """A Corpus over ``paths`` that splits, separates and describes itself as ``spec`` says."""
    return Corpus(
        spec.name,
        paths,
        split=spec.split,
        separator=spec.separator,
        spec=spec,
        split_files=split_files,
        fractions=spec.fractions,
        byte_ranges=spec.byte_ranges,
        level=spec.level,
        errors=errors,
        location=location,
        description=spec.description,
        verified=verified,
    )


def _stdlib_paths() -> list[Path]:
    """The stdlib's top-level .py files, sorted by name, up to STDLIB_CAP_BYTES in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths, total = [], 0
    for p in sorted(root.glob("*.py"), key=lambda p: p.name):
        size = p.stat().st_size
        if size == 0:
            continue
        if total + size > STDLIB_CAP_BYTES:
            break
        paths.append(p)
        total += size
    return paths


def _builtin_corpus(spec: CorpusSpec, errors: str) -> Corpus:
    paths = _stdlib_paths()
    if not paths:
        raise CorpusError(
            f"the built-in corpus {spec.name!r} found no .py files in this Python's standard "
            f"library ({sysconfig.get_paths()['stdlib']}); use a named corpus or a text file instead"
        )
    return _spec_corpus(spec, paths, "builtin", errors)


def _resolve_file(path: Path, rule: dict) -> Corpus:
    if path.stat().st_size == 0:
        raise CorpusError(f"{path} is empty; give a text file with some text in it")
    if not has_text([path], rule["errors"]):
        raise CorpusError(f"{path} holds only whitespace; give a text file with some text in it")
    return Corpus(path.name, [path], **{"separator": "none", **rule}, description=f"the text file {path}")


def _resolve_folder(root: Path, rule: dict) -> Corpus:
    paths, skipped = text_files(root)
    if not paths:
        raise CorpusError(
            f"folder {root} has no text files ({len(skipped)} skipped as empty, binary or non-text; "
            f"hidden files are ignored); put UTF-8 text files such as .txt in it"
        )
    if not has_text(paths, rule["errors"]):
        raise CorpusError(f"the text files in {root} hold only whitespace; add some text")
    # separator "none" of a folder: each file is one document ("file")
    return Corpus(root.name, paths, **{"separator": "file", **rule},
                  description=f"{len(paths)} text file(s) under {root}", skipped=skipped)


def resolve_options(train: dict, name: str | None = None) -> dict:
    """:func:`resolve`'s keyword arguments from training settings (``asdict(TrainConfig)``, or
    config.json's "train" of a run, where a run from before a setting existed lacks it).

    With ``name`` (the corpus to read) a registry name, only ``errors`` is kept: a run on your
    own file can be evaluated on a registry corpus, whose splits are its own.
    """
    options = {"errors": train.get("encoding_errors", "strict")}
    if name in REGISTRY:
        return options
    keys = ("separator", "valid_fraction", "test_fraction", "split_seed")
    options.update({key: train[key] for key in keys if train.get(key) is not None})
    return options
