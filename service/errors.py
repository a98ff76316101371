"""Errors the API returns. Each class fixes its HTTP status, error code and request outcome.

ExtractionError
 ├── BadRequest               400 bad_request        (body is not a valid request)
 │    ├── UnknownTask         400 unknown_task
 │    │    └── TaskNotFound   404 unknown_task         (GET /v1/tasks/{name})
 │    ├── UnknownBackend      400 unknown_backend
 │    ├── InvalidSchema       400 invalid_schema
 │    └── TextTooLong         400 text_too_long
 ├── Unauthorized             401 unauthorized       (no key, or an unknown one; WWW-Authenticate)
 ├── Forbidden                403 forbidden          (the key may not use this task or backend)
 ├── PayloadTooLarge          413 payload_too_large
 ├── RequestTimeout           408 request_timeout    (a head or body too slow to arrive: service.http_server)
 ├── HeadersTooLarge          431 headers_too_large  (request line + headers over limits.max_header_bytes; the server
 │                                                     answers it before the app runs: service.http_server)
 ├── ClientClosedRequest      499 client_closed_request  (the caller went away: work cancelled, outcome cancelled)
 ├── SchemaValidationFailed   422 schema_validation_failed   (after the last attempt)
 │    ├── BudgetExceeded      422 budget_exceeded            (the next attempt would pass max_cost_usd)
 │    └── ValidationTimeout   422 validation_timeout         (an answer took longer than its budget to validate)
 ├── PiiDetected              422 pii_detected       (the task's PII policy rejects what the output holds)
 ├── RateLimited              429 rate_limited       (the key's requests or tokens per minute; Retry-After)
 │    └── QuotaExceeded       429 quota_exceeded     (the key's daily USD budget; Retry-After: next UTC day)
 ├── UpstreamError            502 upstream_error
 ├── BackendUnavailable       503 backend_unavailable        (not configured, or rate limited upstream)
 ├── Overloaded               503 overloaded
 │    └── ShuttingDown        503 shutting_down      (SIGTERM received: in-flight requests finish; Retry-After)
 └── DeadlineExceeded         504 deadline_exceeded

The single place that turns these into HTTP responses is `service.app`'s exception handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from service.pipeline.spend import Spend


class ExtractionError(Exception):
    """`spend`: what the request consumed before it failed (None: nothing was called); its figures are also
    in `details` (attempts, retries, usage, cost_usd), so callers are billed and told alike."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    outcome: ClassVar[str] = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        spend: Spend | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.spend = spend
        self.details = {**spend.details(), **(details or {})} if spend is not None else (details or {})

    def add_spend(self, earlier: Spend) -> None:
        """Add what earlier work (backends before this one in a fallback chain) consumed."""
        self.spend = earlier if self.spend is None else self.spend + earlier
        self.details.update(self.spend.details())

    def body(self, request_id: str | None) -> dict[str, Any]:
        return {
            "error": {"code": self.code, "message": self.message, "details": self.details},
            "request_id": request_id,
        }


class BadRequest(ExtractionError):
    status, code, outcome = 400, "bad_request", "rejected"


class UnknownTask(BadRequest):
    code = "unknown_task"


class TaskNotFound(UnknownTask):
    status = 404


class UnknownBackend(BadRequest):
    code = "unknown_backend"


class InvalidSchema(BadRequest):
    code = "invalid_schema"


class TextTooLong(BadRequest):
    code = "text_too_long"


class Unauthorized(ExtractionError):
    status, code, outcome = 401, "unauthorized", "rejected"


class Forbidden(ExtractionError):
    status, code, outcome = 403, "forbidden", "rejected"


class RateLimited(ExtractionError):
    status, code, outcome = 429, "rate_limited", "rejected"


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"


class PayloadTooLarge(ExtractionError):
    status, code, outcome = 413, "payload_too_large", "rejected"


class RequestTimeout(ExtractionError):
    status, code, outcome = 408, "request_timeout", "rejected"


class HeadersTooLarge(ExtractionError):
    status, code, outcome = 431, "headers_too_large", "rejected"


class ClientClosedRequest(ExtractionError):
    status, code, outcome = 499, "client_closed_request", "cancelled"


class SchemaValidationFailed(ExtractionError):
    status, code, outcome = 422, "schema_validation_failed", "schema_invalid"


class BudgetExceeded(SchemaValidationFailed):
    code = "budget_exceeded"


class ValidationTimeout(SchemaValidationFailed):
    """The schema's patterns or branches cost more than limits.validation_budget_s on an answer: no re-ask."""

    code = "validation_timeout"


class PiiDetected(ExtractionError):
    status, code, outcome = 422, "pii_detected", "rejected"


class UpstreamError(ExtractionError):
    status, code, outcome = 502, "upstream_error", "upstream_error"


class BackendUnavailable(ExtractionError):
    status, code, outcome = 503, "backend_unavailable", "upstream_error"


class Overloaded(ExtractionError):
    status, code, outcome = 503, "overloaded", "rejected"


class ShuttingDown(Overloaded):
    code = "shutting_down"


class DeadlineExceeded(ExtractionError):
    status, code, outcome = 504, "deadline_exceeded", "timeout"
