"""What a request consumed: answers, calls, tokens, USD. One value that adds up across attempts and backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from backends.base import Usage


@dataclass(frozen=True, slots=True)
class Spend:
    """`answers`: replies the model gave (1 + re-asks); `calls`: HTTP calls made for them (retries included);
    `asks`: attempts that made at least one call, answered or not (a first call that failed is not a retry)."""

    answers: int = 0
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    asks: int = 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.answers + other.answers,
            self.calls + other.calls,
            self.usage + other.usage,
            self.cost + other.cost,
            self.asks + other.asks,
        )

    @property
    def retries(self) -> int:
        """Calls beyond the first of each attempt (a spend that counts no calls, such as one answer's bill,
        adds none)."""
        return max(0, self.calls - self.asks)

    @property
    def tokens(self) -> int:
        """Input + output tokens: what a key's tokens-per-minute is charged."""
        return self.usage.input_tokens + self.usage.output_tokens

    @property
    def cost_usd(self) -> float:
        return float(self.cost)

    def details(self) -> dict[str, Any]:
        """The shape error details and responses use."""
        return {
            "attempts": self.answers,
            "retries": self.retries,
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens},
            "cost_usd": self.cost_usd,
        }

    def log_fields(self) -> dict[str, Any]:
        """Flat fields for the request's log line: the same keys on success and failure."""
        return {
            "attempts": self.answers,
            "retries": self.retries,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cost_usd": self.cost_usd,
        }
