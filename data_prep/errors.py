"""The one error type users see from data_prep."""

from __future__ import annotations


class DataPrepError(Exception):
    """A problem with the user's input or environment.

    The message is one line: what was wrong, where (file, line, column) and what to do. The CLI
    prints it and exits with status 2; nothing is written to the output directory.
    """

    exit_code = 2

    def __init__(self, message: str):
        # Keep it to one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))
