"""The cache folder: fetched corpora, trained tokenizers, token files and REPL history.

``$LMGEN_CACHE`` when set, else ``~/.cache/lmgen``. Every module asks :func:`cache_folder`,
so one variable moves all of it (the tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LMGEN_CACHE"


def cache_folder() -> Path:
    """``$LMGEN_CACHE``, else ``~/.cache/lmgen`` (not created here)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lmgen"
