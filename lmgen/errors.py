"""Exceptions that carry a message meant for the user.

Everything a user can get wrong (a file, a flag, a prompt, a checkpoint) raises a
subclass of :class:`LmgenError` whose message says what is wrong *and* how to fix it.
The CLI prints that one line and exits non-zero; anything else that escapes is a bug
and keeps its traceback.
"""


class LmgenError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(LmgenError, ValueError):
    """A flag or config value is out of range or conflicts with another one."""


class CorpusError(LmgenError):
    """A corpus cannot be found, fetched, verified or decoded."""


class TokenizerError(LmgenError):
    """A tokenizer cannot be built, saved or loaded."""


class CheckpointError(LmgenError):
    """A checkpoint folder is missing, damaged, unsafe or from an unknown format."""
