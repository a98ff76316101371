"""The one error of this package: a schema the service will not use (the API answers 400 invalid_schema)."""

from __future__ import annotations

from typing import Any

MAX_ECHO = 200  # characters of a schema's own text quoted back in a message


class SchemaProblem(ValueError):
    """What is wrong and, where it helps, what to change; `details` go into the error body."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


NAME_ECHO = 120  # characters of a task or backend name a caller sent, quoted back in an error


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters: messages quote schemas and answers, never at any length."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
