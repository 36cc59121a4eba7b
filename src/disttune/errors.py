"""The one exception type for user mistakes.

Raise ``UserError`` for anything a user can fix (bad config, bad flag, missing file). The CLI prints
its message without a traceback and exits with ``exit_code`` (1 by default). ``assert`` stays for
internal invariants only.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: what is wrong, where, and how to fix it."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
