"""The pipeline against a queue-driven fake backend: re-ask, retries, budget, deadline, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from backends.base import BackendResponse, Usage
from backends.errors import (
    BackendNotConfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)
from service.api_models import ExtractOptions
from service.config import Settings
from service.errors import (
    BackendUnavailable,
    BudgetExceeded,
    DeadlineExceeded,
    InvalidSchema,
    SchemaValidationFailed,
    TextTooLong,
    UnknownBackend,
    UnknownTask,
    UpstreamError,
)
from service.metrics import Metrics, sample
from service.pipeline.extractor import Extractor
from service.pipeline.spend import Spend
from service.state import AppState
from tests.fakes import FakeBackend

GOOD = json.dumps({"company": "ACME", "invoice_date": "2024-03-14", "total_amount": 1190.0, "currency": "EUR"})
WRONG_TYPE = json.dumps({"company": "ACME", "invoice_date": "2024-03-14", "total_amount": "lots", "currency": "EUR"})


class Harness:
    def __init__(self, state: AppState, sleeps: list[float]) -> None:
        self.state = state
        self.sleeps = sleeps
        self.extractor: Extractor = state.extractor
        self.metrics: Metrics = state.metrics

    def backend(self, name: str = "main") -> FakeBackend:
        backend = self.state.backends[name]
        assert isinstance(backend, FakeBackend)
        return backend

    def count(self, name: str, **labels: Any) -> float:
        return sample(self.metrics.registry, name, **labels)


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Callable[..., Harness]:
    def make(**backend_overrides: Any) -> Harness:
        base = {
            "model": "m",
            "pricing": {"input_per_1k": 0.003, "output_per_1k": 0.006},
            "max_attempts": 3,
            "max_retries": 3,
        }
        settings = make_settings({"main": {**base, **backend_overrides}, "other": {**base, "model": "o"}})
        state = AppState.build(settings, FakeBackend)
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        state.extractor = Extractor(settings, state.backends, state.metrics, state.tasks, sleep=fake_sleep)
        return Harness(state, sleeps)

    return make


async def test_valid_first_answer(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue(GOOD)
    result = await h.extractor.extract("Invoice ...", task="invoice")
    assert result.data["total_amount"] == 1190.0
    assert (result.attempts, result.retries, result.backend) == (1, 0, "main")
    assert result.spend.usage == Usage(700, 150)
    assert result.cost_usd == pytest.approx(0.003)
    request = h.backend().requests[0]
    assert request.mode == "json_schema" and request.strict is True
    assert request.schema == h.state.tasks["invoice"].json_schema
    assert h.count("extraction_requests_total", task="invoice", backend="main", outcome="ok") == 1
    assert h.count("extraction_schema_valid_total", task="invoice", backend="main", first_attempt="true") == 1
    assert h.count("extraction_tokens_total", backend="main", task="invoice", direction="input") == 700
    assert h.count("extraction_cost_usd_total", backend="main", task="invoice") == pytest.approx(0.003)
    assert h.count("extraction_inflight_requests") == 0


async def test_invalid_then_valid_reasks_with_the_errors_and_costs_both(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue(WRONG_TYPE, GOOD)
    result = await h.extractor.extract("Invoice ...", task="invoice")
    assert result.attempts == 2
    assert result.spend.usage == Usage(1400, 300)
    assert result.cost_usd == pytest.approx(0.006)
    second = h.backend().requests[1].messages
    assert second[-2] == {"role": "assistant", "content": WRONG_TYPE}
    assert "$.total_amount" in second[-1]["content"] and "not of type" in second[-1]["content"]
    assert h.count("extraction_attempts_total", backend="main", reason="reask") == 1
    assert h.count("extraction_schema_valid_total", task="invoice", backend="main", first_attempt="false") == 1


async def test_not_json_counts_as_a_validation_failure_and_exhaustion_is_422(harness: Callable[..., Harness]) -> None:
    h = harness(max_attempts=2)
    h.backend().enqueue("Sorry, I can't.", "still no JSON here")
    with pytest.raises(SchemaValidationFailed) as info:
        await h.extractor.extract("Invoice ...", task="invoice")
    details = info.value.details
    assert details["attempts"] == 2
    assert details["raw_output"] == "still no JSON here"
    assert details["errors"][0]["message"] == "the output contains no JSON object"
    assert details["cost_usd"] == pytest.approx(0.006)
    assert h.count("extraction_requests_total", task="invoice", backend="main", outcome="schema_invalid") == 1
    assert h.count("extraction_cost_usd_total", backend="main", task="invoice") == pytest.approx(0.006)


async def test_truncated_output_is_a_failed_attempt_not_an_answer(harness: Callable[..., Harness]) -> None:
    h = harness()
    cut = BackendResponse(text=GOOD, usage=Usage(10, 5), model="m", finish_reason="length", latency_s=0)
    h.backend().enqueue(cut, GOOD)
    result = await h.extractor.extract("Invoice ...", task="invoice")
    assert result.attempts == 2
    assert "cut off" in h.backend().requests[1].messages[-1]["content"]


def _cut(text: str = '{"company": "ACME, ACME, ACME, ACME') -> BackendResponse:
    return BackendResponse(text=text, usage=Usage(10, 5), model="m", finish_reason="length", latency_s=0)


@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
async def test_a_loop_on_a_local_engine_is_asked_afresh_with_a_repetition_penalty(
    harness: Callable[..., Harness], kind: str
) -> None:
    # Shown its own loop in a re-ask, a small model copies it again: the same first ask, greedy, penalised.
    h = harness(kind=kind, base_url="http://127.0.0.1:9/v1")
    h.backend().enqueue(_cut(), GOOD)
    result = await h.extractor.extract("Invoice ...", task="invoice")
    first, second = h.backend().requests
    assert result.attempts == 2 and result.data == json.loads(GOOD)
    assert second.messages == first.messages  # no re-ask turn holding the loop
    assert (first.repetition_penalty, second.repetition_penalty) == (None, 1.1)
    assert (first.temperature, second.temperature) == (0.0, 0.0)
    assert second.max_output_tokens == 2 * first.max_output_tokens


async def test_a_penalised_answer_that_loops_again_is_sampled(harness: Callable[..., Harness]) -> None:
    h = harness(kind="vllm", base_url="http://127.0.0.1:9/v1")
    h.backend().enqueue(_cut(), _cut(), GOOD)
    result = await h.extractor.extract("Invoice ...", task="invoice")
    first, second, third = h.backend().requests
    assert result.attempts == 3 and third.messages == second.messages == first.messages
    assert [r.repetition_penalty for r in (first, second, third)] == [None, 1.1, 1.1]
    assert [r.temperature for r in (first, second, third)] == [0.0, 0.0, 0.7]


async def test_after_a_penalised_ask_a_new_wrong_answer_is_re_asked_with_its_errors(
    harness: Callable[..., Harness],
) -> None:
    h = harness(kind="vllm", base_url="http://127.0.0.1:9/v1")
    h.backend().enqueue(_cut(), WRONG_TYPE, GOOD)
    await h.extractor.extract("Invoice ...", task="invoice")
    first, _, third = h.backend().requests
    assert third.messages[: len(first.messages)] == first.messages and "$.total_amount" in third.messages[-1]["content"]
    assert third.repetition_penalty == 1.1 and third.temperature == 0.0


async def test_without_a_penalty_a_loop_is_re_asked_at_the_reask_temperature(harness: Callable[..., Harness]) -> None:
    for overrides in ({"kind": "vllm", "base_url": "http://127.0.0.1:9/v1", "loop_repetition_penalty": None}, {}):
        h = harness(**overrides)  # {}: an OpenAI backend, whose API has no repetition penalty
        h.backend().enqueue(_cut(), GOOD)
        await h.extractor.extract("Invoice ...", task="invoice")
        first, second = h.backend().requests
        assert second.repetition_penalty is None and second.temperature == 0.7
        assert second.messages[: len(first.messages)] == first.messages and "cut off" in second.messages[-1]["content"]


async def test_repaired_json_is_accepted_and_counted(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue(GOOD[:-1] + ",}")  # trailing comma
    result = await h.extractor.extract("Invoice ...", task="invoice")
    assert result.data == json.loads(GOOD) and result.attempts == 1
    assert h.count("extraction_json_repairs_total", backend="main") == 1


async def test_rate_limit_honours_retry_after_then_succeeds(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue(UpstreamRateLimited("429", backend="main", retry_after_s=2.5), GOOD)
    result = await h.extractor.extract("Invoice ...", task="invoice")
    assert (result.attempts, result.retries) == (1, 1)
    assert h.sleeps == [2.5]
    assert h.count("extraction_attempts_total", backend="main", reason="retry_rate_limited") == 1


async def test_retry_after_is_capped(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue(UpstreamRateLimited("429", backend="main", retry_after_s=3600), GOOD)
    await h.extractor.extract("Invoice ...", task="invoice")
    assert h.sleeps == [5]  # retry_after_cap_s in the test config


async def test_server_errors_back_off_exponentially_then_502(harness: Callable[..., Harness]) -> None:
    h = harness(max_retries=2)
    h.backend().enqueue(*(UpstreamServerError("500", backend="main", status_code=500) for _ in range(3)))
    with pytest.raises(UpstreamError) as info:
        await h.extractor.extract("Invoice ...", task="invoice")
    assert len(h.sleeps) == 2 and all(0 <= s <= 0.05 for s in h.sleeps)
    assert info.value.details["upstream_status"] == 500
    assert info.value.details["retries"] == 2  # three calls: the first and its two retries
    assert h.count("extraction_requests_total", task="invoice", backend="main", outcome="upstream_error") == 1
    assert h.count("extraction_attempts_total", backend="main", reason="retry_server_error") == 2


async def test_client_errors_are_not_retried(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue(UpstreamRejected("upstream 400: bad", backend="main", status_code=400), GOOD)
    with pytest.raises(UpstreamError):
        await h.extractor.extract("Invoice ...", task="invoice")
    assert h.sleeps == [] and len(h.backend().requests) == 1


async def test_exhausted_rate_limit_is_503_with_retry_after(harness: Callable[..., Harness]) -> None:
    h = harness(max_retries=1)
    h.backend().enqueue(*(UpstreamRateLimited("429", backend="main", retry_after_s=1.2) for _ in range(2)))
    with pytest.raises(BackendUnavailable) as info:
        await h.extractor.extract("Invoice ...", task="invoice")
    assert info.value.headers == {"Retry-After": "2"}


async def test_exhausted_rate_limit_without_retry_after_still_says_when(harness: Callable[..., Harness]) -> None:
    h = harness(max_retries=1)
    h.backend().enqueue(*(UpstreamRateLimited("429", backend="main") for _ in range(2)))
    with pytest.raises(BackendUnavailable) as info:
        await h.extractor.extract("Invoice ...", task="invoice")
    assert info.value.headers == {"Retry-After": "1"}


async def test_timeouts_exhausted_are_504(harness: Callable[..., Harness]) -> None:
    h = harness(max_retries=1)
    h.backend().enqueue(UpstreamTimeout("t", backend="main"), UpstreamTimeout("t", backend="main"))
    with pytest.raises(DeadlineExceeded):
        await h.extractor.extract("Invoice ...", task="invoice")
    assert h.count("extraction_requests_total", task="invoice", backend="main", outcome="timeout") == 1


async def test_missing_key_is_503_naming_the_variable(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue(BackendNotConfigured("set OPENAI_API_KEY", backend="main"))
    with pytest.raises(BackendUnavailable, match="OPENAI_API_KEY"):
        await h.extractor.extract("Invoice ...", task="invoice")


async def test_overall_deadline_cuts_a_hanging_call(harness: Callable[..., Harness]) -> None:
    h = harness()

    class Hang(FakeBackend):
        async def complete(self, request):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()

    backends = {**h.state.backends, "main": Hang(h.state.settings.backends["main"])}
    extractor = Extractor(h.state.settings, backends, h.metrics, h.state.tasks)
    with pytest.raises(DeadlineExceeded, match="deadline of 0.05 s"):
        await extractor.extract("Invoice ...", task="invoice", options=ExtractOptions(timeout_s=0.05))
    assert h.count("extraction_inflight_requests") == 0


async def test_budget_stops_before_the_attempt_that_would_exceed_it(harness: Callable[..., Harness]) -> None:
    h = harness(max_output_tokens=100)
    h.backend().enqueue(WRONG_TYPE, GOOD)
    # first attempt: 0.003 spent; a second would add at least ~0.0006 (output cap) + input
    with pytest.raises(BudgetExceeded) as info:
        await h.extractor.extract("Invoice ...", task="invoice", options=ExtractOptions(max_cost_usd=0.0045))
    assert len(h.backend().requests) == 1
    details = info.value.details
    assert details["attempts"] == 1 and details["cost_usd"] == pytest.approx(0.003)
    assert details["errors"] and details["max_cost_usd"] == 0.0045
    assert info.value.status == 422 and info.value.code == "budget_exceeded"


async def test_budget_too_small_for_any_attempt_calls_nothing(harness: Callable[..., Harness]) -> None:
    h = harness()
    with pytest.raises(BudgetExceeded):
        await h.extractor.extract("Invoice ...", task="invoice", options=ExtractOptions(max_cost_usd=1e-9))
    assert h.backend().requests == []


async def test_options_only_tighten_config(harness: Callable[..., Harness]) -> None:
    h = harness(max_attempts=2, max_output_tokens=64)
    h.backend().enqueue("no", "no", "no")
    with pytest.raises(SchemaValidationFailed):
        await h.extractor.extract("x", task="invoice", options=ExtractOptions(max_attempts=10, max_output_tokens=9999))
    assert len(h.backend().requests) == 2
    assert h.backend().requests[0].max_output_tokens == 64


async def test_routing_override_and_unknown_names(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend("other").enqueue(GOOD)
    assert (await h.extractor.extract("x", task="invoice", backend="other")).backend == "other"
    with pytest.raises(UnknownBackend, match="unknown backend 'nope'"):
        await h.extractor.extract("x", task="invoice", backend="nope")
    with pytest.raises(UnknownTask, match="available: contract_clause"):
        await h.extractor.extract("x", task="nope")
    assert h.count("extraction_requests_total", task="-", backend="-", outcome="rejected") == 1
    assert h.count("extraction_requests_total", task="invoice", backend="-", outcome="rejected") == 1


async def test_adhoc_schema_is_checked_first(harness: Callable[..., Harness]) -> None:
    h = harness()
    with pytest.raises(InvalidSchema):
        await h.extractor.extract("x", schema={"type": "nonsense"})
    h.backend().enqueue('{"city":"Lisbon"}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    result = await h.extractor.extract("I live in Lisbon", schema=schema, instructions="The city.")
    assert result.data == {"city": "Lisbon"} and result.task == "adhoc"
    # not strict-compatible for OpenAI (no additionalProperties:false): degraded to JSON mode, said so
    assert result.structured_output == "json_object"
    assert h.backend().requests[-1].mode == "json_object"
    assert h.count("extraction_structured_output_degraded_total", backend="main", task="adhoc") == 1


async def test_text_too_long_is_rejected_before_any_call(harness: Callable[..., Harness]) -> None:
    h = harness()
    with pytest.raises(TextTooLong):
        await h.extractor.extract("x" * 50_001, task="invoice")
    assert h.backend().requests == []


async def test_null_fields_are_counted(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.backend().enqueue('{"company":null,"invoice_date":null,"total_amount":3,"currency":"EUR"}')
    await h.extractor.extract("x", task="invoice")
    assert h.count("extraction_field_null_total", task="invoice", field="company") == 1
    assert h.count("extraction_field_null_total", task="invoice", field="currency") == 0


async def test_max_cost_covers_the_whole_fallback_chain(harness: Callable[..., Harness]) -> None:
    h = harness(fallback=["other"], max_attempts=1, max_output_tokens=100)
    h.backend("main").enqueue(WRONG_TYPE)  # 700 in + 150 out at 0.003/0.006: $0.003 spent, then no valid answer
    with pytest.raises(BudgetExceeded) as e:
        await h.extractor.extract("Invoice ...", task="invoice", options=ExtractOptions(max_cost_usd=0.0045))
    assert h.backend("other").requests == []  # the next backend's attempt could pass what is left
    assert e.value.spend is not None and e.value.spend.answers == 1
    assert e.value.details["cost_usd"] == pytest.approx(0.003)


async def test_the_chain_skips_backends_the_caller_may_not_use(harness: Callable[..., Harness]) -> None:
    h = harness(fallback=["other"], max_attempts=1)
    h.backend("main").enqueue(WRONG_TYPE)
    with pytest.raises(SchemaValidationFailed):
        await h.extractor.extract("Invoice ...", task="invoice", may_use=lambda name: name != "other")
    assert h.backend("other").requests == []


async def test_every_billed_answer_is_reported_even_when_the_request_is_cancelled(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    hold = asyncio.Event()

    class Hang(FakeBackend):
        async def complete(self, request):  # type: ignore[no-untyped-def]
            if len(self.requests) >= 1:
                self.requests.append(request)
                await hold.wait()  # the re-ask never answers
            return await super().complete(request)

    backends = {**h.state.backends, "main": Hang(h.state.settings.backends["main"])}
    backends["main"].enqueue(WRONG_TYPE)  # type: ignore[attr-defined]
    extractor = Extractor(h.state.settings, backends, h.metrics, h.state.tasks)
    billed: list[Spend] = []
    work = asyncio.ensure_future(extractor.extract("Invoice ...", task="invoice", on_spend=billed.append))
    while len(backends["main"].requests) < 2:  # type: ignore[attr-defined]
        await asyncio.sleep(0)  # yield to the extraction until its re-ask is in flight
    work.cancel()
    with pytest.raises(asyncio.CancelledError):
        await work
    assert [(s.answers, s.usage) for s in billed] == [(1, Usage(700, 150))]  # the first answer was billed
    assert h.count("extraction_requests_total", task="invoice", backend="main", outcome="cancelled") == 1
