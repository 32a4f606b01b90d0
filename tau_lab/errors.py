"""The one error the command line shows as a single line: bad input from the user.

``UserError`` (a ``ValueError``, so library callers may catch either) covers a bad experiment file or
override, bad data, a bad argument such as τ ≤ 0, and a run directory or checkpoint that cannot be used.
Its message is one line saying what, where, and what is allowed. Every other exception is a bug and
the CLI shows its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message is one line naming what, where and what is allowed."""
