"""What a request asked for and what it got: options, results, spend, and backend errors as API errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from backends.base import StructuredMode, Usage
from backends.errors import BackendError, BackendNotConfigured, CircuitOpen, UpstreamRateLimited, UpstreamTimeout
from service.errors import BackendUnavailable, DeadlineExceeded, ExtractionError, UpstreamError
from service.validation import Issue

RAW_SNIPPET_CHARS = 500


@dataclass(frozen=True, slots=True)
class Options:
    """Per-request limits; each can only tighten what the backend's config allows."""

    max_attempts: int | None = None
    max_cost_usd: float | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    timeout_s: float | None = None


@dataclass(slots=True)
class Result:
    data: Any
    task: str
    backend: str
    model: str
    attempts: int
    retries: int
    usage: Usage
    cost_usd: float
    latency_ms: float
    structured_output: StructuredMode
    repaired: bool = False


@dataclass(slots=True)
class Spend:
    """What a request has consumed so far; travels into error details."""

    answers: int = 0
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)

    def details(self) -> dict[str, Any]:
        return {
            "attempts": self.answers,
            "retries": self.calls - self.answers,
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens},
            "cost_usd": float(self.cost),
        }


def failure_details(spend: Spend, issues: list[Issue], raw: str) -> dict[str, Any]:
    return {
        **spend.details(),
        "errors": [i.as_dict() for i in issues],
        "raw_output": raw[:RAW_SNIPPET_CHARS],
    }


def translate_backend_error(error: BackendError, spend: Spend) -> ExtractionError:
    details = {**spend.details(), "backend": error.backend}
    if error.status_code is not None:
        details["upstream_status"] = error.status_code
    if isinstance(error, CircuitOpen):
        return BackendUnavailable(
            error.message, details=details, headers={"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
        )
    if isinstance(error, BackendNotConfigured):
        return BackendUnavailable(error.message, details=details)
    if isinstance(error, UpstreamRateLimited):
        headers = {"Retry-After": str(math.ceil(error.retry_after_s))} if error.retry_after_s else {}
        return BackendUnavailable(
            f"backend {error.backend!r} is rate limited upstream; retries exhausted",
            details=details,
            headers=headers,
        )
    if isinstance(error, UpstreamTimeout):
        return DeadlineExceeded(f"backend {error.backend!r} timed out: {error.message}", details=details)
    return UpstreamError(f"backend {error.backend!r} failed: {error.message}", details=details)
