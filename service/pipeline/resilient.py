"""A Backend wrapped in transport retries (tenacity), a circuit breaker and a bulkhead: the same interface.

Retries cover 429 (honouring Retry-After up to a cap), 5xx, timeouts (hosted APIs only, by default),
connection errors and unreadable bodies, with exponential backoff and full jitter, and never sleep into the
request's deadline. The breaker fails fast while a backend keeps failing; the bulkhead bounds its concurrent
calls, its queue and the wait in it, and with `adaptive_concurrency` its limit follows the engine's latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from backends.base import Backend, BackendRequest, BackendResponse
from backends.errors import (
    CircuitOpen,
    RetryableBackendError,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from service.config import BackendConfig, RetryPolicy
from service.metrics import Metrics
from service.resilience import AdaptiveLimit, Bulkhead, CircuitBreaker

LATENCY_WEIGHT = 0.2  # EWMA weight of the latest call in the latency estimate
DEVIATION_WEIGHT = 0.25  # and in its mean deviation (Jacobson/Karels, as TCP estimates its round trip)
DEVIATIONS = 2.0  # a call is admitted when the time left covers mean + 2 mean deviations (~P95 of a normal spread)

_RETRY_REASON: dict[type[BaseException] | None, str] = {
    UpstreamRateLimited: "retry_rate_limited",
    UpstreamServerError: "retry_server_error",
    UpstreamTimeout: "retry_timeout",
    UpstreamConnectionError: "retry_connection",
    UpstreamBadResponse: "retry_bad_response",
}


class ResilientBackend:
    """`inner` behind retries, a breaker and a bulkhead, configured by the backend's policy."""

    def __init__(
        self,
        inner: Backend,
        policy: BackendConfig,
        retry: RetryPolicy,
        metrics: Metrics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = policy.name
        self.policy = policy
        self.retry = retry
        self.metrics = metrics
        self._sleep = sleep
        adaptive = policy.adaptive_concurrency
        self.bulkhead = Bulkhead(
            adaptive.initial if adaptive else policy.max_concurrency,
            policy.max_queue,
            f"backend {policy.name!r}",
            max_wait_s=policy.max_queue_wait_s,
        )
        self.adaptive = (
            AdaptiveLimit(self.bulkhead, adaptive.target_latency_s, adaptive.min_concurrency,
                          policy.max_concurrency, adaptive.backoff)
            if adaptive
            else None
        )  # fmt: skip
        c = policy.circuit
        self.circuit = CircuitBreaker(
            c.failure_threshold, c.reset_after_s, clock, error_rate=c.error_rate, window=c.window
        )
        self._latency_s: float | None = None  # EWMA of answered calls, for deadline-aware admission
        self._deviation_s = 0.0  # EWMA of their distance from it
        metrics.circuit_state.labels(self.name).set(0)  # on the dashboard from the start, closed
        metrics.concurrency_limit.labels(self.name).set(self.bulkhead.limit)

    async def complete(
        self,
        request: BackendRequest,
        *,
        deadline_at: float = float("inf"),
        reason: str = "initial",
        on_call: Callable[[], None] | None = None,
    ) -> BackendResponse:
        """One answer, retried as the policy allows until `deadline_at` (monotonic); `on_call` runs before each
        HTTP call, so a caller counts the calls even of a request cut off by its deadline."""
        policy = self.retry
        backoff = wait_random_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, UpstreamRateLimited) and error.retry_after_s is not None:
                return min(error.retry_after_s, policy.retry_after_cap_s)
            return float(backoff(state))

        def stop(state: RetryCallState) -> bool:
            # Give up rather than sleep into the deadline: the caller gets the real error, not a 504.
            out_of_time = state.upcoming_sleep >= deadline_at - time.monotonic()
            return state.attempt_number > self.policy.max_retries or out_of_time

        def before_sleep(state: RetryCallState) -> None:
            nonlocal reason
            error = state.outcome.exception() if state.outcome else None
            reason = _RETRY_REASON.get(type(error) if error else None, "retry")

        try:
            async for try_ in AsyncRetrying(
                retry=retry_if_exception(self._retryable),
                wait=wait,
                stop=stop,
                reraise=True,
                sleep=self._sleep,
                before_sleep=before_sleep,
            ):
                with try_:
                    response = await self._guarded_call(request, deadline_at, reason, on_call)
        except UpstreamRateLimited as e:
            # The caller is told to wait no longer than we would have (an upstream may say 999999).
            if e.retry_after_s is not None:
                e.retry_after_s = min(e.retry_after_s, policy.retry_after_cap_s)
            raise
        return response

    def _retryable(self, error: BaseException) -> bool:
        if isinstance(error, UpstreamTimeout) and not self.policy.retry_timeouts:
            return False  # a local engine that timed out is saturated: fail fast instead of queueing again
        return isinstance(error, RetryableBackendError)

    async def _guarded_call(
        self, request: BackendRequest, deadline_at: float, reason: str, on_call: Callable[[], None] | None
    ) -> BackendResponse:
        """One HTTP call through the breaker and the bulkhead, timed and counted."""
        breaker = self.circuit
        if not breaker.allow():
            raise CircuitOpen(
                f"backend {self.name!r} is failing: its circuit is open ({breaker.why})",
                backend=self.name,
                retry_after_s=breaker.retry_after_s(),
            )
        try:
            async with self.bulkhead.slot(self._admission_wait(deadline_at)):
                # Counted once it has a slot: a call shed by the bulkhead was never made.
                self.metrics.attempts.labels(self.name, reason).inc()
                if on_call is not None:
                    on_call()
                timeout = max(0.001, min(self.policy.timeout_s, deadline_at - time.monotonic()))
                t0 = time.perf_counter()
                try:
                    response = await self.inner.complete(replace(request, timeout_s=timeout))
                except (UpstreamTimeout, UpstreamServerError):
                    self._observe(time.perf_counter() - t0, t0, failed=True)
                    raise
                except asyncio.CancelledError:
                    self._observe(time.perf_counter() - t0, t0)  # cut off: at least this slow (cuts if late)
                    raise
                else:
                    self._observe(time.perf_counter() - t0, t0)
                finally:
                    self.metrics.backend_duration.labels(self.name).observe(time.perf_counter() - t0)
        except RetryableBackendError:
            breaker.failure()
            raise
        except BaseException:
            breaker.release()  # shed, rejected or cancelled: says nothing of the backend's health
            raise
        else:
            breaker.success()
        finally:
            self.metrics.circuit_state.labels(self.name).set(int(breaker.state))
        return response

    def _admission_wait(self, deadline_at: float) -> float | None:
        """How long this call may wait for a slot and still finish before its deadline, by the latency of recent
        calls (their EWMA plus DEVIATIONS mean deviations: a busy engine's latency spreads, and a call admitted
        on the mean alone would miss half the time; None until one finished, or without adaptive admission). A
        call that could not finish in time is shed with 503 now, not admitted to end as a 504 after the engine
        spent its work on it."""
        expected = self.expected_latency_s()
        if self.adaptive is None or expected is None or deadline_at == float("inf"):
            return None
        return deadline_at - time.monotonic() - expected

    def expected_latency_s(self) -> float | None:
        """What admission expects a call to take (None: no call has finished yet)."""
        if self._latency_s is None:
            return None
        return self._latency_s + DEVIATIONS * self._deviation_s

    def _observe(self, latency_s: float, started_at: float | None = None, failed: bool = False) -> None:
        if not failed:
            previous = self._latency_s
            if previous is None:
                # No spread yet (TCP starts at half the first sample, but a cold start's first call is slow
                # enough already: twice that would shed every queued call for a while)
                self._latency_s, self._deviation_s = latency_s, 0.0
            else:
                self._deviation_s += DEVIATION_WEIGHT * (abs(latency_s - previous) - self._deviation_s)
                self._latency_s = previous + LATENCY_WEIGHT * (latency_s - previous)
        if self.adaptive is not None:
            self.adaptive.observe(latency_s, failed=failed, started_at=started_at)
            self.metrics.concurrency_limit.labels(self.name).set(self.bulkhead.limit)

    async def ping(self, timeout_s: float = 2.0) -> None:
        await self.inner.ping(timeout_s)

    def configured(self) -> bool:
        return self.inner.configured()

    async def aclose(self) -> None:
        await self.inner.aclose()
