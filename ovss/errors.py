"""Errors that ovss raises for bad input.

Every error carries a one-line, user-facing message that names what was wrong and what to
do about it; the CLI prints that message and exits with status 2, never a traceback.
"""

from __future__ import annotations


class OvssError(Exception):
    """Base class of every error ovss raises on purpose (bad input, missing files, weights)."""


class InputError(OvssError, ValueError):
    """Bad user input: an unreadable image, an empty or duplicate class list, a bad option."""


class UnknownNameError(OvssError, ValueError):
    """An unknown method, model, dataset protocol or other name."""


class ModelLoadError(OvssError, RuntimeError):
    """Weights that cannot be downloaded, or a checkpoint that does not fit the model."""


class DatasetError(OvssError, FileNotFoundError):
    """A missing or half-prepared dataset folder."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' Did you mean X?' for the closest of ``choices``, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
