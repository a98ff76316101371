"""A backend that answers from a queue (like simonw/llm's MockModel), for pipeline unit tests."""

from __future__ import annotations

from collections import deque

from backends.base import BackendRequest, BackendResponse, Usage
from backends.config import Endpoint


class FakeBackend:
    def __init__(self, config: Endpoint) -> None:
        self.name = config.name
        self.config = config
        self.queue: deque[str | BackendResponse | Exception] = deque()
        self.requests: list[BackendRequest] = []
        self.closed = False

    def enqueue(self, *items: str | BackendResponse | Exception) -> None:
        self.queue.extend(items)

    async def complete(self, request: BackendRequest) -> BackendResponse:
        self.requests.append(request)
        item = self.queue.popleft()
        if isinstance(item, Exception):
            raise item
        if isinstance(item, BackendResponse):
            return item
        return BackendResponse(
            text=item, usage=Usage(700, 150), model=self.config.model, finish_reason="stop", latency_s=0.001
        )

    async def ping(self, timeout_s: float = 2.0) -> None:
        return None

    def configured(self) -> bool:
        return True

    async def aclose(self) -> None:
        self.closed = True
