"""Graceful shutdown: on SIGTERM, answer new API requests with 503, finish the ones in flight, then stop.

uvicorn alone closes its listening socket at once on SIGTERM: callers then see refused connections, and
requests already running get `timeout_graceful_shutdown` to finish. A load balancer needs a moment in
between, in which the process still answers, says so (`/readyz` 503 `draining`, new work 503
`shutting_down` with `Retry-After`) and finishes what it holds. `Drain` is that state; `DrainGuard` is the
ASGI middleware that counts requests in flight and refuses new ones while draining; `install_signal_handler`
(called from the app's lifespan, so once per worker process) puts a handler in front of uvicorn's:

1. first SIGTERM/SIGINT: start draining; after `grace_s` (time for the load balancer to see /readyz fail)
   and once nothing is in flight (at most `timeout_s`), hand the signal to uvicorn, which stops as usual;
2. a second signal while draining: hand it to uvicorn at once (stop now, as without this module).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ExtractionError, ShuttingDown

log = structlog.get_logger("extraction.lifecycle")
_tasks: set[asyncio.Task[None]] = set()  # keeps the drain task referenced until the process stops


class ShutdownConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drain: bool = Field(True, description="On SIGTERM: 503 for new requests while in-flight ones finish.")
    grace_s: float = Field(
        0.0, ge=0, description="Keep answering 503 at least this long (a load balancer's health-check interval)."
    )
    timeout_s: float = Field(30.0, gt=0, description="Longest wait for in-flight requests before stopping anyway.")


class Drain:
    """Requests in flight and whether the process is shutting down. One per app."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.draining = True

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when nothing is in flight; False when `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class DrainGuard:
    """Counts API requests in flight; while draining, answers new ones 503 `shutting_down`."""

    def __init__(
        self,
        app: ASGIApp,
        drain: Drain,
        respond: Callable[[ExtractionError], ASGIApp],
        on_reject: Callable[[], None] | None = None,
        prefix: str = "/v1/",
    ) -> None:
        self.app = app
        self.drain = drain
        self.respond = respond
        self.on_reject = on_reject
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            if self.on_reject is not None and scope["path"].startswith("/v1/extract"):
                self.on_reject()
            error = ShuttingDown(
                "the server is shutting down; send the request again (another replica will take it)",
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await self.respond(error)(scope, receive, send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


def install_signal_handler(drain: Drain, config: ShutdownConfig) -> bool:
    """Put the draining handler in front of the server's SIGTERM/SIGINT handlers (main thread only)."""
    try:
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    except (RuntimeError, ValueError):
        return False
    if not all(callable(handler) for handler in previous.values()):
        return False  # no server handler to hand over to (SIG_DFL / SIG_IGN): leave signals alone

    def forward(sig: int, frame: FrameType | None) -> None:
        handler: Any = previous[signal.Signals(sig)]
        handler(sig, frame)

    async def finish(sig: int) -> None:
        started = time.monotonic()
        if config.grace_s:
            await asyncio.sleep(config.grace_s)
        idle = await drain.wait_idle(max(0.0, config.timeout_s - (time.monotonic() - started)))
        log.info("drained", in_flight=drain.inflight, waited_s=round(time.monotonic() - started, 3), complete=idle)
        forward(sig, None)

    def handle(sig: int, frame: FrameType | None) -> None:
        if drain.draining:
            forward(sig, frame)  # second signal: stop now
            return
        drain.begin()
        log.info("draining", signal=signal.Signals(sig).name, in_flight=drain.inflight, grace_s=config.grace_s)
        loop.call_soon_threadsafe(lambda: _tasks.add(loop.create_task(finish(sig))))

    try:
        for sig in previous:
            signal.signal(sig, handle)
    except ValueError:  # not the main thread (an app served from a thread, as in tests)
        return False
    return True
