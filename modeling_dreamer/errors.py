"""The project's own error types: bad input and impossible requests, as opposed to bugs.

Command-line tools (``train.py``, ``python -m data.prepare``, ``python -m envs.record`` ...) print a
:class:`DreamerError` as one line naming the file, argument or problem, and exit with status 1 (2 for
arguments); every other exception is a bug or an environment failure and keeps its traceback. Standard library
only, so the data layer (which does not import torch) and the training code share these classes.

- :class:`DataError` (also a ``ValueError``): input data that cannot be used as it is (a missing or corrupt
  file, a shape mismatch, unsorted frames ...); the message names the file and the problem.
- :class:`ArgumentError` (also a ``ValueError``): a command-line or recipe argument out of its range, or one
  that does not apply; the message names the argument.
- :class:`RunError` (also a ``RuntimeError``): a run that cannot start or continue as asked (a folder in use,
  a checkpoint of another stage, a resume with changed arguments ...); the message says why and what to do.
"""

from __future__ import annotations


class DreamerError(Exception):
    """Base class: an error whose message alone tells the user what to fix."""


class DataError(DreamerError, ValueError):
    """Bad input data. The message names the file and the problem."""


class ArgumentError(DreamerError, ValueError):
    """A bad argument. The message names the argument and what it accepts."""


class RunError(DreamerError, RuntimeError):
    """A run cannot start or continue as asked; the message says why and what to do."""
