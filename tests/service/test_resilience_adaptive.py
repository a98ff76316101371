"""Admission sized to the engine: a bounded wait for a slot, AIMD on latency, no retry of a local timeout."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BackendRequest
from backends.errors import UpstreamTimeout
from service.config import BackendConfig, RetryPolicy
from service.errors import Overloaded
from service.metrics import Metrics, sample
from service.pipeline.resilient import ResilientBackend
from service.resilience import AdaptiveLimit, Bulkhead
from tests.fakes import FakeBackend


async def test_a_waiter_is_shed_when_no_slot_frees_within_max_wait() -> None:
    gate = Bulkhead(1, max_queue=5, what="backend 'b'", max_wait_s=0.01)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    holder = asyncio.ensure_future(hold())
    await asyncio.sleep(0)  # let the holder take the slot
    with pytest.raises(Overloaded, match="no slot within 0.01 s") as shed:
        async with gate.slot():
            pass
    assert shed.value.headers["Retry-After"] == "1" and gate.waiting == 0
    release.set()
    await holder
    async with gate.slot():  # the slot is free again
        assert gate.active == 1


async def test_raising_the_limit_lets_waiters_in() -> None:
    gate = Bulkhead(1, max_queue=5, what="b")
    release = asyncio.Event()
    entered: list[int] = []

    async def worker(i: int) -> None:
        async with gate.slot():
            entered.append(i)
            await release.wait()

    tasks = [asyncio.ensure_future(worker(i)) for i in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert entered == [0] and gate.waiting == 2
    gate.set_limit(3)
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(entered) == [0, 1, 2] and gate.active == 3
    release.set()
    await asyncio.gather(*tasks)


def test_aimd_grows_while_fast_and_in_use_and_cuts_when_slow() -> None:
    gate = Bulkhead(4, max_queue=0, what="b")
    aimd = AdaptiveLimit(gate, target_s=2.0, minimum=1, maximum=8, backoff=0.5)
    gate.active = 3  # the limit is in use
    for _ in range(12):
        aimd.observe(1.0)
    assert 5 <= gate.limit <= 8
    grown = gate.limit
    aimd.observe(5.0)  # one slow call
    assert gate.limit == int(aimd.estimate) < grown
    for _ in range(10):
        aimd.observe(0.1, failed=True)
    assert gate.limit == 1  # never below the minimum
    gate.active = 0
    for _ in range(20):
        aimd.observe(0.1)  # fast, but the limit is not in use: no reason to grow it
    assert gate.limit == 1


def test_aimd_cuts_once_for_the_calls_that_were_running_together() -> None:
    gate = Bulkhead(16, max_queue=0, what="b")
    aimd = AdaptiveLimit(gate, target_s=2.0, minimum=1, maximum=16, backoff=0.5)
    for end in (10.0, 10.5, 11.0, 11.5):  # four calls started at t=5, all slow: one burst, one cut (at t=10)
        aimd.observe(end - 5.0, started_at=5.0)
    assert gate.limit == 8
    aimd.observe(3.0, started_at=10.2)  # began after the cut and still slow: the new limit is too high
    assert gate.limit == 4
    aimd.observe(3.0, started_at=12.0)  # began before that cut (t=13.2): answered for
    aimd.observe(0.5, failed=True, started_at=13.0)  # a timeout of a call running at that cut: the same
    assert gate.limit == 4
    aimd.observe(3.0, started_at=13.5)  # a later call, slow again: cuts again
    assert gate.limit == 2
    unordered = AdaptiveLimit(Bulkhead(8, max_queue=0, what="b"), target_s=2.0, maximum=8, backoff=0.5)
    for _ in range(3):
        unordered.observe(5.0)  # without start times every slow call cuts, as before
    assert unordered.bulkhead.limit == 1


def backend(kind: str, **policy: object) -> tuple[ResilientBackend, FakeBackend, Metrics]:
    cfg = BackendConfig.model_validate({"name": "b", "kind": kind, "model": "m", "max_retries": 3, **policy})
    inner = FakeBackend(cfg.endpoint)
    metrics = Metrics()

    async def no_sleep(_: float) -> None:
        return None

    return ResilientBackend(inner, cfg, RetryPolicy(), metrics, sleep=no_sleep), inner, metrics


async def test_a_local_engine_that_timed_out_is_not_called_again() -> None:
    local, inner, _ = backend("vllm")
    inner.enqueue(UpstreamTimeout("read timeout", backend="b"), '{"a": 1}')
    with pytest.raises(UpstreamTimeout):
        await local.complete(BackendRequest(messages=[]))
    assert len(inner.requests) == 1
    hosted, inner, _ = backend("openai")
    inner.enqueue(UpstreamTimeout("read timeout", backend="b"), '{"a": 1}')
    assert (await hosted.complete(BackendRequest(messages=[]))).text == '{"a": 1}'
    assert len(inner.requests) == 2
    assert BackendConfig(name="x", kind="vllm", model="m", retry_timeouts=True).retry_timeouts is True


async def test_adaptive_limit_is_exported_and_cut_by_a_timeout() -> None:
    local, inner, metrics = backend("vllm", max_concurrency=8, adaptive_concurrency={"initial": 4, "backoff": 0.5})
    assert sample(metrics.registry, "extraction_backend_concurrency_limit", backend="b") == 4
    inner.enqueue(UpstreamTimeout("read timeout", backend="b"))
    with pytest.raises(UpstreamTimeout):
        await local.complete(BackendRequest(messages=[]))
    assert sample(metrics.registry, "extraction_backend_concurrency_limit", backend="b") == 2
    with pytest.raises(ValueError, match="must not exceed max_concurrency"):
        BackendConfig(name="x", model="m", max_concurrency=2, adaptive_concurrency={"initial": 4})  # type: ignore[arg-type]


async def test_a_caller_bound_below_the_bulkheads_wait_sheds_at_once_or_at_its_own_bound() -> None:
    gate = Bulkhead(1, max_queue=5, what="b", max_wait_s=30)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    holder = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="would not finish before the request's deadline"):
        async with gate.slot(max_wait_s=-1.0):
            pass
    with pytest.raises(Overloaded, match="no slot in time to finish before the request's deadline"):
        async with gate.slot(max_wait_s=0.01):
            pass
    assert gate.waiting == 0
    release.set()
    await holder
    async with gate.slot(max_wait_s=-1.0):  # a free slot is taken whatever the bound
        assert gate.active == 1


class Held(FakeBackend):
    """Answers once `release` is set (a call the engine is still working on)."""

    def __init__(self, config: object) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        self.release = asyncio.Event()

    async def complete(self, request: BackendRequest) -> object:  # type: ignore[override]
        await self.release.wait()
        return await super().complete(request)


async def test_a_call_that_would_miss_its_deadline_is_shed_instead_of_queued() -> None:
    cfg = BackendConfig.model_validate({"name": "b", "kind": "vllm", "model": "m", "max_concurrency": 1,
                                        "adaptive_concurrency": {"initial": 1, "target_latency_s": 60}})  # fmt: skip
    inner = Held(cfg.endpoint)
    local = ResilientBackend(inner, cfg, RetryPolicy(), Metrics())
    inner.enqueue('{"a": 1}', '{"a": 2}', '{"a": 3}')
    loop = asyncio.get_running_loop()
    inner.release.set()
    assert (await local.complete(BackendRequest(messages=[]))).text == '{"a": 1}'  # latency known from here
    inner.release.clear()
    first = asyncio.ensure_future(local.complete(BackendRequest(messages=[]), deadline_at=loop.time() + 600))
    await asyncio.sleep(0)
    assert local.bulkhead.active == 1
    # The only slot is busy; this one's deadline is already behind the engine's recent latency.
    with pytest.raises(Overloaded, match="deadline"):
        await local.complete(BackendRequest(messages=[]), deadline_at=loop.time() - 1)
    waiter = asyncio.ensure_future(local.complete(BackendRequest(messages=[]), deadline_at=loop.time() + 600))
    await asyncio.sleep(0)
    assert local.bulkhead.waiting == 1  # a call with time to spare still queues
    inner.release.set()
    assert [(await first).text, (await waiter).text] == ['{"a": 2}', '{"a": 3}']


def test_admission_expects_the_spread_of_recent_latencies_not_their_mean() -> None:
    cfg = BackendConfig.model_validate({"name": "b", "kind": "vllm", "model": "m", "max_concurrency": 4,
                                        "adaptive_concurrency": {"initial": 4, "target_latency_s": 60}})  # fmt: skip
    local = ResilientBackend(FakeBackend(cfg.endpoint), cfg, RetryPolicy(), Metrics())
    assert local.expected_latency_s() is None
    local._observe(10.0)
    assert local.expected_latency_s() == pytest.approx(10.0)  # one call: its latency, no spread yet
    for _ in range(30):
        local._observe(10.0)
    steady = local.expected_latency_s()
    assert steady == pytest.approx(10.0)  # steady latencies: the mean
    for latency in (4.0, 16.0, 4.0, 16.0, 4.0, 16.0):
        local._observe(latency)
    spread = local.expected_latency_s()
    assert spread is not None and spread > 20.0  # same mean, wide spread: room for a slow call


async def test_a_call_whose_time_left_covers_the_mean_but_not_the_spread_is_shed() -> None:
    cfg = BackendConfig.model_validate({"name": "b", "kind": "vllm", "model": "m", "max_concurrency": 1,
                                        "adaptive_concurrency": {"initial": 1, "target_latency_s": 60}})  # fmt: skip
    inner = Held(cfg.endpoint)
    local = ResilientBackend(inner, cfg, RetryPolicy(), Metrics())
    for latency in (4.0, 16.0, 4.0, 16.0, 4.0, 16.0):  # mean about 10 s, widely spread
        local._observe(latency)
    mean, expected = local._latency_s, local.expected_latency_s()
    assert mean is not None and expected is not None and expected > mean + 8
    inner.enqueue('{"a": 1}', '{"a": 2}')
    loop = asyncio.get_running_loop()
    busy = asyncio.ensure_future(local.complete(BackendRequest(messages=[]), deadline_at=loop.time() + 600))
    await asyncio.sleep(0)
    assert local.bulkhead.active == 1
    with pytest.raises(Overloaded, match="deadline"):  # the mean would fit; a slow call of this spread would not
        await local.complete(BackendRequest(messages=[]), deadline_at=loop.time() + mean + 2)
    waiter = asyncio.ensure_future(local.complete(BackendRequest(messages=[]), deadline_at=loop.time() + expected + 5))
    await asyncio.sleep(0)
    assert local.bulkhead.waiting == 1  # time for the spread too: it queues
    inner.release.set()
    assert [(await busy).text, (await waiter).text] == ['{"a": 1}', '{"a": 2}']
