"""User mistakes end a command with a one-line message and exit status 2, not a traceback."""

from __future__ import annotations

import functools
import os
import sys

from .errors import FtpluginsError


def exit_on_user_error(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FtpluginsError as exc:
            if os.environ.get("FTPLUGINS_TRACEBACK"):
                raise
            print(f"ftplugins: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
