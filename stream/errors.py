"""One exception hierarchy for streamrec; the CLI maps each branch to an exit code.

::

    StreamrecError                 exit 1   anything streamrec raises on purpose
    ├── ConfigError                exit 2   a bad setting or flag; the message names the key
    ├── InputFormatError           exit 3   a malformed log row under --strict (names file and line)
    ├── StackError                 exit 4   the embedded broker/Redis could not start, or is not running
    └── ModelError                 exit 5   unknown model name, incompatible or corrupt weights
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Anything streamrec raises on purpose (exit code 1)."""

    exit_code = 1


class ConfigError(StreamrecError):
    """A bad setting or flag; the message names the key (exit code 2)."""

    exit_code = 2


class InputFormatError(StreamrecError):
    """A malformed log row under ``--strict``; the message names file and line (exit code 3)."""

    exit_code = 3


class StackError(StreamrecError):
    """The broker or Redis could not start, is not running, or did not answer (exit code 4)."""

    exit_code = 4


class ModelError(StreamrecError):
    """An unknown model name, or incompatible or corrupt weights (exit code 5)."""

    exit_code = 5
