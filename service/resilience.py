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
    """At most `limit` holders at once; at most `max_queue` waiting (first come, first served), each at most
    `max_wait_s`; anyone beyond gets 503 overloaded at once (or when its wait runs out), never an unbounded wait.

    `limit` may change while running (an `AdaptiveLimit` moves it): waiters are let in as it grows, and
    holders above a shrunk limit simply finish; nobody is interrupted.
    """

    def __init__(self, limit: int, max_queue: int, what: str, max_wait_s: float | None = None) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.what = what
        self.waiting = 0
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _overloaded(self, why: str = "") -> Overloaded:
        return Overloaded(
            f"{self.what} is at capacity ({self.limit} running, {self.waiting} queued{why}); try again shortly",
            details={"running": self.active, "queued": self.waiting, "max_queue": self.max_queue,
                     "limit": self.limit},
            headers={"Retry-After": "1"},
        )  # fmt: skip

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    @asynccontextmanager
    async def slot(self, max_wait_s: float | None = None) -> AsyncIterator[None]:
        """Hold a slot for the block. `max_wait_s`: this caller's own bound on the wait (below `max_wait_s` of
        the bulkhead); 0 or less sheds at once when no slot is free."""
        if self.active >= self.limit or self._waiters:
            if self.waiting >= self.max_queue:
                raise self._overloaded()
            if max_wait_s is not None and max_wait_s <= 0:
                raise self._overloaded("; a call now would not finish before the request's deadline")
            await self._wait_turn(max_wait_s)
        else:
            self.active += 1
        try:
            yield
        finally:
            self._release()

    async def _wait_turn(self, own_wait_s: float | None = None) -> None:
        """Queue until a slot is handed over (`_wake` counts it as ours before we resume)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        self.waiting += 1
        waits = [w for w in (self.max_wait_s, own_wait_s) if w is not None]
        wait_s = min(waits) if waits else None
        try:
            async with asyncio.timeout(wait_s):
                await turn
        except BaseException as e:
            if turn.done() and not turn.cancelled():
                self._release()  # handed a slot just as we gave up: pass it on
            else:
                turn.cancel()
            if isinstance(e, TimeoutError):
                why = (f"; no slot within {wait_s:g} s" if wait_s == self.max_wait_s
                       else "; no slot in time to finish before the request's deadline")  # fmt: skip
                raise self._overloaded(why) from None
            raise
        finally:
            self.waiting -= 1
            if turn in self._waiters:
                self._waiters.remove(turn)

    def _release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            turn = self._waiters.popleft()
            if not turn.done():
                self.active += 1
                turn.set_result(None)


class AdaptiveLimit:
    """AIMD on latency (TCP's congestion control, as Netflix's concurrency-limits applies it to servers):
    while calls finish within `target_s` and the limit is in use, grow it by one per `limit` calls (+1 per
    round trip); when one is slower or times out, cut it by `backoff`. A CPU engine's latency grows with the
    batch, so the limit settles where calls still finish in time and the surplus is shed, not queued.

    One cut per window, as TCP cuts once per window of losses: the calls already running when a cut was made
    were admitted under the old limit and end slow for the same reason, so they do not cut again; only a call
    started after the cut speaks for the new limit. (Cutting on each of them took a limit of 4 to 1 on one
    burst: four slow calls, 4 x 0.7^4.)"""

    def __init__(
        self, bulkhead: Bulkhead, target_s: float, minimum: int = 1, maximum: int | None = None, backoff: float = 0.7
    ) -> None:
        self.bulkhead = bulkhead
        self.target_s = target_s
        self.minimum = minimum
        self.maximum = maximum or bulkhead.limit
        self.backoff = backoff
        self.estimate = float(bulkhead.limit)
        self._cut_at = float("-inf")

    def observe(self, latency_s: float, *, failed: bool = False, started_at: float | None = None) -> None:
        """One call ended after `latency_s` (`failed`: it timed out or the engine broke down). `started_at`:
        when it began (any monotonic clock, the same for every call); a slow call that began before the last
        cut does not cut again. Without it every slow call cuts."""
        if failed or latency_s > self.target_s:
            if started_at is not None and started_at < self._cut_at:
                return  # in flight when the limit was cut: already answered for
            self.estimate = max(float(self.minimum), self.estimate * self.backoff)
            if started_at is not None:
                self._cut_at = started_at + latency_s
        elif self.bulkhead.active * 2 >= int(self.estimate):  # grow only a limit at least half in use
            self.estimate = min(float(self.maximum), self.estimate + 1.0 / self.estimate)
        self.bulkhead.set_limit(int(self.estimate))


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
        self.why = ""  # why it last opened, for the error callers get while it is open

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
        if why := self._opening_reason():
            self.why = why
            self.state = CircuitState.OPEN
            self.opened_at = self.clock()
            self._recent.clear()  # after the probe closes it, the rate starts afresh
        self._probe_out = False

    def _opening_reason(self) -> str:
        """Why the failure just counted opens the circuit ("" when it does not)."""
        if self.state is CircuitState.HALF_OPEN:
            return "its probe call failed"
        if self.failures >= self.failure_threshold:
            return f"after {self.failures} consecutive failed calls"
        if self._rate_exceeded():
            return f"{sum(self._recent)} of its last {len(self._recent)} calls failed"
        return ""

    def _rate_exceeded(self) -> bool:
        full = self._recent.maxlen is not None and len(self._recent) == self._recent.maxlen
        return self.error_rate > 0 and full and sum(self._recent) / len(self._recent) >= self.error_rate

    def release(self) -> None:
        """A call ended that says nothing about the backend's health (e.g. cancelled by the client)."""
        self._probe_out = False
