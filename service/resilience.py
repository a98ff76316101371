"""Load shedding and circuit breaking: bounded waiting instead of unbounded latency, and fast failure
for a backend that keeps failing.

Both live in one event loop (one per worker process), so plain counters suffice: no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import IntEnum

from service.errors import Overloaded


class Bulkhead:
    """At most `limit` holders at once; at most `max_queue` waiting; anyone beyond gets 503 overloaded."""

    def __init__(self, limit: int, max_queue: int, what: str) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.what = what
        self.waiting = 0
        self.active = 0
        self._sem = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._sem.locked() and self.waiting >= self.max_queue:
            raise Overloaded(
                f"{self.what} is at capacity ({self.limit} running, {self.waiting} queued); try again shortly",
                details={"running": self.active, "queued": self.waiting, "max_queue": self.max_queue},
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._sem.release()


class CircuitState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures, or when at least `error_rate` of the last `window`
    calls failed (once `window` calls were seen; 0 turns this off); after `reset_after_s` lets one probe
    through (half-open); the probe's success closes it, its failure opens it again for another `reset_after_s`.
    The rate catches a backend that fails often but never N times in a row."""

    def __init__(
        self,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        error_rate: float = 0.0,
        window: int = 20,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.error_rate = error_rate
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probe_out = False
        self._recent: deque[bool] = deque(maxlen=window)  # True: the call failed

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self.clock() - self.opened_at < self.reset_after_s:
                return False
            self.state = CircuitState.HALF_OPEN
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def retry_after_s(self) -> float:
        return max(0.0, self.opened_at + self.reset_after_s - self.clock())

    def success(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self._probe_out = False
        self._recent.append(False)

    def failure(self) -> None:
        self.failures += 1
        self._recent.append(True)
        too_many_in_a_row = self.failures >= self.failure_threshold
        if self.state is CircuitState.HALF_OPEN or too_many_in_a_row or self._rate_exceeded():
            self.state = CircuitState.OPEN
            self.opened_at = self.clock()
            self._recent.clear()  # after the probe closes it, the rate starts afresh
        self._probe_out = False

    def _rate_exceeded(self) -> bool:
        full = self._recent.maxlen is not None and len(self._recent) == self._recent.maxlen
        return self.error_rate > 0 and full and sum(self._recent) / len(self._recent) >= self.error_rate

    def release(self) -> None:
        """A call ended that says nothing about the backend's health (e.g. cancelled by the client)."""
        self._probe_out = False
