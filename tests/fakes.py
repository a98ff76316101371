"""A backend that answers from a queue (like simonw/llm's MockModel), for pipeline unit tests."""

from __future__ import annotations

from collections import deque
from typing import Any

from backends.base import BackendRequest, BackendResponse, Usage
from backends.config import Endpoint


class FakeBackend:
    def __init__(self, config: Endpoint) -> None:
        self.name = config.name
        self.config = config
        self.queue: deque[str | BackendResponse | Exception] = deque()
        self.requests: list[BackendRequest] = []
        self.probes: list[BackendRequest] = []  # grammar probes, answered apart from the queue
        self.probe_answer: str | Exception = "{}"
        self.closed = False

    def enqueue(self, *items: str | BackendResponse | Exception) -> None:
        self.queue.extend(items)

    async def complete(self, request: BackendRequest) -> BackendResponse:
        if request.purpose == "probe":
            self.probes.append(request)
            item: str | BackendResponse | Exception = self.probe_answer
        else:
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


def fake_state(max_attempts: int) -> Any:
    """An AppState on the shipped tasks with one FakeBackend `main` (for property tests, built once per caller)."""
    import json
    import tempfile
    from pathlib import Path

    from service.config import DEFAULT_CONFIG, Settings
    from service.state import AppState

    config = Path(tempfile.mkdtemp(prefix="fake-state-")) / "config.yaml"
    config.write_text(json.dumps({
        "default_backend": "main", "tasks_dir": str(DEFAULT_CONFIG.parent / "tasks"),
        "backends": {"main": {"kind": "vllm", "model": "m", "max_attempts": max_attempts}},
    }))  # fmt: skip
    return AppState.build(Settings(config=config), FakeBackend)  # type: ignore[call-arg]
