"""Backend errors and exhausted attempts, as the API errors the caller gets (with what was spent)."""

from __future__ import annotations

import math
from typing import Any

from backends.errors import BackendError, BackendNotConfigured, CircuitOpen, UpstreamRateLimited, UpstreamTimeout
from service.errors import BackendUnavailable, DeadlineExceeded, ExtractionError, UpstreamError
from service.pipeline.spend import Spend
from service.schemas.compiled import Issue

RAW_SNIPPET_CHARS = 500


def failure_details(issues: list[Issue], raw: str) -> dict[str, Any]:
    """What a caller needs to see why the answers did not validate: the errors and a snippet of the last."""
    return {"errors": [i.as_dict() for i in issues], "raw_output": raw[:RAW_SNIPPET_CHARS]}


RATE_LIMITED_RETRY_AFTER_S = 1  # Retry-After of a 503 after upstream 429s that named no wait of their own


def translate_backend_error(error: BackendError, spend: Spend) -> ExtractionError:
    details: dict[str, Any] = {"backend": error.backend}
    if error.status_code is not None:
        details["upstream_status"] = error.status_code
    if isinstance(error, CircuitOpen):
        return BackendUnavailable(
            error.message,
            details=details,
            headers={"Retry-After": str(max(1, math.ceil(error.retry_after_s)))},
            spend=spend,
        )
    if isinstance(error, BackendNotConfigured):
        return BackendUnavailable(error.message, details=details, spend=spend)
    if isinstance(error, UpstreamRateLimited):
        # An upstream that gave no Retry-After still gets the caller one: a 503 says "come back", so say when.
        wait = math.ceil(error.retry_after_s) if error.retry_after_s else RATE_LIMITED_RETRY_AFTER_S
        headers = {"Retry-After": str(max(1, wait))}
        return BackendUnavailable(
            f"backend {error.backend!r} is rate limited upstream; retries exhausted",
            details=details,
            headers=headers,
            spend=spend,
        )
    if isinstance(error, UpstreamTimeout):
        return DeadlineExceeded(f"backend {error.backend!r} timed out: {error.message}", details=details, spend=spend)
    return UpstreamError(f"backend {error.backend!r} failed: {error.message}", details=details, spend=spend)
