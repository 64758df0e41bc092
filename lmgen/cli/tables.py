"""What ``lmgen corpus list`` and ``lmgen corpus info`` print: plain-text views of corpora.

Display only: the CLI calls these, no library module does. From a notebook::

    from lmgen import corpora
    from lmgen.cli import tables
    print(tables.format_corpus_table())
    print(tables.format_info(corpora.resolve("ptb")))
"""

from __future__ import annotations

from ..cache import CACHE_ENV, cache_folder
from ..corpora import MIRROR_ENV, Corpus, CorpusSpec, list_corpora
from ..corpora.download import find_local, human_size, local_places
from ..corpora.registry import STDLIB_CAP_BYTES


def _availability(spec: CorpusSpec) -> str:
    """Where the corpus's files are on this machine: builtin, mirror, cache or missing."""
    if spec.builtin:
        return "builtin"
    found = find_local(spec, local_places())
    return found[0] if found is not None else "missing"


def format_corpus_table() -> str:
    """The registry as a text table: name, level, split, separator, size, where, description."""
    rows = [("name", "level", "split", "separator", "size", "local", "description")]
    for spec in list_corpora():
        if spec.builtin:
            size = f"~{human_size(STDLIB_CAP_BYTES)}"
        else:
            size = human_size(spec.size)
        if spec.split == "files":
            rule = "files"
        elif spec.byte_ranges is not None:
            rule = "bytes " + "/".join(f"{(b - a) / 1e6:g}M" for a, b in spec.byte_ranges)
        else:
            assert spec.fractions is not None
            rule = f"{spec.split} " + "/".join(f"{round(f * 100, 6):g}" for f in spec.fractions)
        rows.append((spec.name, spec.level, rule, spec.separator, size, _availability(spec), spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    lines.append(
        f"local: builtin = needs no files; mirror = ${MIRROR_ENV}; cache = ${CACHE_ENV} "
        f"({cache_folder()}); missing = run `lmgen corpus fetch NAME`"
    )
    return "\n".join(lines)


def format_info(corpus: Corpus) -> str:
    """A few lines describing a corpus and its splits (streams the corpus once)."""
    info = corpus.info()
    lines = [f"{info['name']}: {info['description']}".rstrip(": ")]
    lines.append(f"  location   {info['location']}")
    files = info["files"]
    shown = files if len(files) <= 5 else files[:3] + [f"... ({len(files) - 3} more)"]
    lines.append(f"  files      {shown[0]}")
    lines.extend(f"             {f}" for f in shown[1:])
    if info["skipped"]:
        lines.append(f"  skipped    {len(info['skipped'])} empty, binary or non-text file(s)")
    lines.append(f"  size       {info['bytes']:,} bytes")
    lines.append(f"  split      {info['split']}")
    lines.append(f"  separator  {info['separator']} (each document ends with [END])")
    lines.append(f"  level      {info['level']} (suggested tokenizer)")
    if info["reference"]:
        lines.append(f"  reference  {info['reference']}")
    lines.append(f"  fingerprint {info['fingerprint'][:16]}")
    for s, d in info["splits"].items():
        lines.append(f"  {s:<6} {d['chars']:>13,} chars {d['bytes']:>13,} bytes {d['documents']:>9,} documents")
    return "\n".join(lines)
