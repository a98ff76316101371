"""The resilient wrapper is a Backend like the one it wraps: retries, breaker and bulkhead around it."""

from __future__ import annotations

import pytest

from backends.base import Backend, BackendRequest
from backends.errors import CircuitOpen, UpstreamRejected, UpstreamServerError
from service.config import BackendConfig, RetryPolicy
from service.metrics import Metrics, sample
from service.pipeline.resilient import ResilientBackend
from tests.fakes import FakeBackend

REQUEST = BackendRequest(messages=[{"role": "user", "content": "x"}])


def wrap(**policy: object) -> tuple[ResilientBackend, FakeBackend, Metrics, list[float]]:
    cfg = BackendConfig.model_validate({"name": "b", "model": "m", **policy})
    inner = FakeBackend(cfg.endpoint)
    metrics = Metrics()
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    return ResilientBackend(inner, cfg, RetryPolicy(), metrics, sleep=sleep), inner, metrics, sleeps


async def test_it_is_a_backend_that_passes_calls_through() -> None:
    backend, inner, _, _ = wrap()
    assert isinstance(backend, Backend) and backend.name == "b"
    assert backend.configured() and await backend.ping() is None
    await backend.aclose()
    assert inner.closed


async def test_server_errors_are_retried_and_every_call_is_counted() -> None:
    backend, inner, metrics, sleeps = wrap(max_retries=2)
    inner.enqueue(UpstreamServerError("500", backend="b"), UpstreamServerError("503", backend="b"), '{"a": 1}')
    calls: list[int] = []
    response = await backend.complete(REQUEST, on_call=lambda: calls.append(1))
    assert response.text == '{"a": 1}' and len(calls) == 3 and len(sleeps) == 2
    assert sample(metrics.registry, "extraction_attempts_total", backend="b", reason="initial") == 1
    assert sample(metrics.registry, "extraction_attempts_total", backend="b", reason="retry_server_error") == 2


async def test_fatal_errors_are_not_retried_and_the_circuit_opens() -> None:
    backend, inner, metrics, _ = wrap(max_retries=0, circuit={"failure_threshold": 1, "reset_after_s": 60})
    inner.enqueue(UpstreamRejected("400", backend="b"))
    with pytest.raises(UpstreamRejected):
        await backend.complete(REQUEST)
    inner.enqueue(UpstreamServerError("500", backend="b"))
    with pytest.raises(UpstreamServerError):
        await backend.complete(REQUEST)
    with pytest.raises(CircuitOpen):
        await backend.complete(REQUEST)  # fails fast: the fake's queue is empty, so a call would raise otherwise
    assert sample(metrics.registry, "extraction_circuit_state", backend="b") == 1
