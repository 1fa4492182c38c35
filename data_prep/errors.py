"""The one base class of every error a user sees as a single line.

data_prep is the bottom layer of the project, so the base lives here and `napo` imports it
(`napo.errors.UserError` is the same class). Every script turns a `UserError` into
`error: <message>` on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input or environment, told in one line.

    The message says what was wrong, where (file, line, column) and what to do. Scripts print it
    and exit with status 2, leaving no partial output behind.
    """

    exit_code = 2

    def __init__(self, message: str = ""):
        # Keep it to one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))


class DataPrepError(UserError):
    """A problem with data_prep's raw input, options or environment."""
