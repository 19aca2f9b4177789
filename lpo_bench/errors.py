"""The one harness error type.

Every user-facing mistake (unknown name, missing weights, bad input file, ...) raises
:class:`HarnessError` with a one-line message that says what is wrong and how to fix it.
The CLI prints the message and exits with code 2, without a traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A user-facing error: one line, what is wrong and what to do about it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
