"""Exception hierarchy.

Every error derivcheck raises on purpose is a :class:`DerivcheckError`. Errors about a
user's input are also ``ValueError`` or ``TypeError`` so ordinary ``except`` clauses work.
"""

from __future__ import annotations

from typing import Any


class DerivcheckError(Exception):
    """Base class of every error derivcheck raises on purpose."""


class InvalidArgument(DerivcheckError, ValueError):
    """An argument has the right type but a value derivcheck cannot use."""


class InvalidType(DerivcheckError, TypeError):
    """An argument has a type derivcheck cannot use."""


class ExpressionError(InvalidArgument):
    """An expression string is not in the whitelisted grammar.

    **Arguments:**

    - `message`: what is wrong and what is allowed.
    - `text`: the full expression text.
    - `column`: 0-based column of the offending piece, when known.
    """

    def __init__(self, message: str, text: str = "", column: int | None = None):
        self.text = text
        self.column = column
        if text and column is not None:
            pointer = " " * column + "^"
            message = f"{message}\n    {text}\n    {pointer}"
        super().__init__(message)


class CaseError(InvalidArgument):
    """A case file (or case dictionary) is invalid.

    The message names the file, the key, the offending value and what is allowed.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        value: Any = None,
        allowed: str | None = None,
    ):
        self.file = file
        self.key = key
        self.value = value
        self.allowed = allowed
        parts = []
        if file:
            parts.append(file)
        if key:
            parts.append(f"key {key!r}")
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        if value is not None:
            shown = repr(value)
            if len(shown) > 200:
                shown = shown[:197] + "..."
            text += f" (got {shown})"
        if allowed:
            text += f"; allowed: {allowed}"
        super().__init__(text)


class EngineError(DerivcheckError):
    """An engine failed while computing a quantity (a bug, not bad input)."""
