"""User-facing errors.

Every mistake a user can make (a misspelled plugin, a bad option, a model path that does not exist)
raises a subclass of :class:`FtpluginsError`. The command-line entry points print its message and
exit with status 2 instead of showing a traceback; library users can catch it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FtpluginsError(Exception):
    """A problem with the user's input; the message names the input, what was expected and the fix."""


class UnknownPluginError(FtpluginsError):
    pass


class OptionError(FtpluginsError):
    pass


class HookConflictError(FtpluginsError):
    pass


class MissingExtraError(FtpluginsError):
    pass


class UnsupportedModelError(FtpluginsError):
    pass


class DatasetColumnsError(FtpluginsError):
    pass


class ModelPathError(FtpluginsError):
    pass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' did you mean X?' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" did you mean {close[0]}?" if close else ""
