"""Why a message cannot be processed: a short code for metrics, a sentence for people."""

from __future__ import annotations


class Invalid(Exception):
    """The message goes to the dead-letter topic unchanged, with this reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"

    def bare(self) -> Invalid:
        """The same reason, to keep: a caught exception's traceback holds the frames it passed
        through, and with them whatever holds the exception (the batch's parsed messages, its
        result), a reference cycle that only Python's collector frees."""
        return Invalid(self.code, self.reason)
