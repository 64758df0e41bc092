"""lmgen: character-, word- and SentencePiece-level recurrent language models.

>>> import lmgen
>>> model, tokenizer = lmgen.load("checkpoints/run")  # doctest: +SKIP
"""

from .version import __version__


def load(path, device="cpu"):
    """Load ``(model, tokenizer)`` from a checkpoint or run folder (see :mod:`lmgen.checkpoint`)."""
    from .checkpoint import load as _load

    return _load(path, device)


__all__ = ["__version__", "load"]
