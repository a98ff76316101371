"""The service over real loopback HTTP in front of the scripted upstream, with settings per test."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.config import Settings
from service.metrics import sample
from service.state import AppState
from tests.conftest import backend_entry


class Service:
    def __init__(self, app: Any, url: str, upstream: MockUpstream) -> None:
        self.app = app
        self.upstream = upstream
        self.http = httpx.Client(base_url=url, timeout=60)

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.extraction
        return state

    def adhoc(
        self, schema: Any, answer: Any = None, headers: dict[str, str] | None = None, **body: Any
    ) -> httpx.Response:
        """POST an ad-hoc extraction; `answer` (JSON, or text as is) is what the upstream replies first."""
        if answer is not None:
            self.upstream.enqueue(Reply(content=answer if isinstance(answer, str) else json.dumps(answer)))
        body = {"schema": schema, "text": "The document.", **body}
        return self.http.post("/v1/extract", json=body, headers=headers or {})

    def metric(self, name: str, **labels: Any) -> float:
        return sample(self.state.metrics.registry, name, **labels)


@pytest.fixture
def make_service(upstream: MockUpstream, make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Service]]:
    """`make_service(limits={...}, backend={...}, **top)`: one service per call, stopped after the test."""
    servers: list[tuple[ServerThread, Service]] = []

    def make(limits: dict[str, Any] | None = None, backend: dict[str, Any] | None = None, **top: Any) -> Service:
        url = f"{upstream.url}/v1"  # type: ignore[attr-defined]
        entry = backend_entry(url, **{"max_attempts": 3, **(backend or {})})
        settings = make_settings({"mock": entry}, limits=limits or {}, **top)
        app = create_app(settings)
        server = ServerThread(app)
        server.__enter__()
        svc = Service(app, server.url, upstream)
        servers.append((server, svc))
        return svc

    yield make
    for server, svc in servers:
        svc.http.close()
        server.__exit__(None, None, None)
