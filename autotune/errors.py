"""The one root exception of autotune.

Every error a user can cause (a model file that breaks the contract, a bad YAML, a bad
argument) is raised as an ``AutotuneError`` subclass with a message that names the file,
the key or argument, what was wrong and what is allowed. The CLI catches ``AutotuneError``
once, prints the message and the hint, and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of every error autotune raises on purpose.

    ``hint`` is an optional second line telling the user how to fix the problem.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ModelFileError(AutotuneError):
    """The model file breaks the contract (see README, "The model file")."""


class ConfigError(AutotuneError):
    """A YAML file (tuned config, search space, profile) or an argument is invalid."""


class TrialError(AutotuneError):
    """A trial could not produce a measurement (the study records why and goes on)."""
