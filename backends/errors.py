"""Transport errors a backend raises; the pipeline decides what each means for the caller.

BackendError
 ├── RetryableBackendError          (the same call may succeed later)
 │    ├── UpstreamRateLimited       (429; carries retry_after_s)
 │    ├── UpstreamServerError       (5xx)
 │    ├── UpstreamTimeout           (connect or read timed out)
 │    ├── UpstreamConnectionError   (refused, reset mid-body, DNS)
 │    └── UpstreamBadResponse       (2xx whose body is not a usable completion)
 └── FatalBackendError              (retrying cannot help)
      ├── UpstreamRejected          (4xx other than 429: bad request, unknown model, auth)
      ├── BackendNotConfigured      (e.g. the API key variable is unset)
      └── CircuitOpen               (the pipeline's breaker refuses calls after repeated failures)
"""

from __future__ import annotations


class BackendError(Exception):
    """Base of every error raised by a backend."""

    def __init__(self, message: str, *, backend: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.backend = backend
        self.status_code = status_code


class RetryableBackendError(BackendError):
    """A transient fault: the same call may succeed if repeated."""


class UpstreamRateLimited(RetryableBackendError):
    def __init__(self, message: str, *, backend: str, retry_after_s: float | None = None) -> None:
        super().__init__(message, backend=backend, status_code=429)
        self.retry_after_s = retry_after_s


class UpstreamServerError(RetryableBackendError):
    pass


class UpstreamTimeout(RetryableBackendError):
    pass


class UpstreamConnectionError(RetryableBackendError):
    pass


class UpstreamBadResponse(RetryableBackendError):
    pass


class FatalBackendError(BackendError):
    """Repeating the call cannot help."""


class UpstreamRejected(FatalBackendError):
    pass


class BackendNotConfigured(FatalBackendError):
    pass


class CircuitOpen(FatalBackendError):
    def __init__(self, message: str, *, backend: str, retry_after_s: float) -> None:
        super().__init__(message, backend=backend)
        self.retry_after_s = retry_after_s
