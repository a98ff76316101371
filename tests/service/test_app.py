"""The service over real loopback HTTP in front of the fault-injecting OpenAI-compatible upstream."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.config import BackendConfig, Settings
from service.metrics import sample
from service.routes.extract import _backend_header
from tests.conftest import backend_entry

pytestmark = pytest.mark.integration

GOOD = {"company": "ACME GmbH", "invoice_date": "2024-03-14", "total_amount": 1190.0, "currency": "EUR"}


class Service:
    def __init__(self, app: Any, url: str, upstream: MockUpstream) -> None:
        self.app = app
        self.url = url
        self.upstream = upstream
        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=body, **kw)

    def metric(self, name: str, **labels: Any) -> float:
        return sample(self.app.state.extraction.metrics.registry, name, **labels)


@pytest.fixture
def service(upstream: MockUpstream, make_settings: Callable[..., Settings]) -> Iterator[Service]:
    url = upstream.url  # type: ignore[attr-defined]
    settings = make_settings(
        {
            # 2 s: past it only the replies that hang on purpose; a call slowed by a loaded CI box is not retried
            "mock": backend_entry(f"{url}/v1", timeout_s=2.0),
            "second": backend_entry(
                f"{url}/v1", model="second-model", pricing={"input_per_1k": 0.0008, "output_per_1k": 0.0008}
            ),
            "unset": backend_entry(f"{url}/v1", api_key_env="NOT_SET_ANYWHERE_KEY"),
        },
        limits={"max_text_chars": 2000, "max_batch_items": 4, "max_body_bytes": 20000},
    )
    app = create_app(settings)
    with ServerThread(app) as server:
        svc = Service(app, server.url, upstream)
        yield svc
        svc.http.close()


def ok(content: dict[str, Any] | str, **kw: Any) -> Reply:
    return Reply(content=content if isinstance(content, str) else json.dumps(content), **kw)


def test_happy_path_returns_validated_data_usage_cost_and_request_id(service: Service) -> None:
    service.upstream.enqueue(ok(GOOD, usage=(700, 150)))
    r = service.post(
        "/v1/extract", {"task": "invoice", "text": "Invoice from ACME GmbH ..."}, headers={"X-Request-ID": "req-123"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["data"] == GOOD
    assert (body["task"], body["backend"], body["model"], body["attempts"]) == ("invoice", "mock", "mock-model", 1)
    assert body["usage"] == {"input_tokens": 700, "output_tokens": 150}
    assert body["cost_usd"] == pytest.approx(0.003)
    assert body["request_id"] == "req-123" and r.headers["x-request-id"] == "req-123"
    sent = service.upstream.requests[-1]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["messages"][-1]["content"].startswith("<document>")
    assert service.metric("extraction_requests_total", task="invoice", backend="mock", outcome="ok") == 1
    assert service.metric("extraction_cost_usd_total", backend="mock", task="invoice") == pytest.approx(0.003)
    assert service.metric("extraction_request_duration_seconds_count", task="invoice", backend="mock") == 1
    assert service.metric("extraction_backend_duration_seconds_count", backend="mock") == 1


def test_wrong_json_then_right_is_reasked(service: Service) -> None:
    service.upstream.enqueue(ok({**GOOD, "total_amount": "1.190,00"}, usage=(100, 10)), ok(GOOD, usage=(130, 10)))
    body = service.post("/v1/extract", {"task": "invoice", "text": "x"}).json()
    assert body["attempts"] == 2 and body["data"] == GOOD
    assert body["usage"] == {"input_tokens": 230, "output_tokens": 20}
    reask = service.upstream.requests[-1]["messages"][-1]["content"]
    assert "$.total_amount" in reask


def test_exhausted_reasks_are_422_with_errors_and_raw_snippet(service: Service) -> None:
    service.upstream.enqueue(*(ok("I am not JSON") for _ in range(3)))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "schema_validation_failed"
    assert error["details"]["attempts"] == 3 and error["details"]["raw_output"] == "I am not JSON"
    assert error["details"]["errors"] and error["details"]["cost_usd"] > 0
    assert service.metric("extraction_requests_total", task="invoice", backend="mock", outcome="schema_invalid") == 1


def test_429_with_retry_after_is_retried(service: Service) -> None:
    service.upstream.enqueue(Reply(status=429, headers={"retry-after-ms": "20"}), ok(GOOD))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 200 and r.json()["retries"] == 1
    assert service.metric("extraction_attempts_total", backend="mock", reason="retry_rate_limited") == 1


def test_429_storm_ends_in_503_with_retry_after(service: Service) -> None:
    service.upstream.enqueue(
        *(Reply(status=429, headers={"retry-after": "1", "retry-after-ms": "10"}) for _ in range(4))
    )
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "backend_unavailable" and r.headers["retry-after"] == "1"
    assert len(service.upstream.requests) == 4  # 1 + max_retries


def test_500s_then_success(service: Service) -> None:
    service.upstream.enqueue(Reply(status=500), Reply(status=502), ok(GOOD))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 200 and r.json()["retries"] == 2


def test_persistent_500s_are_502(service: Service) -> None:
    service.upstream.enqueue(*(Reply(status=500) for _ in range(4)))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert r.json()["error"]["details"]["retries"] == 3  # 4 calls: the first and 3 retries
    assert service.metric("extraction_requests_total", task="invoice", backend="mock", outcome="upstream_error") == 1


def test_a_refused_first_call_is_no_retry(service: Service) -> None:
    service.upstream.enqueue(Reply(status=400, content="bad request"))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 502 and len(service.upstream.requests) == 1
    assert r.json()["error"]["details"]["retries"] == 0


def test_hang_past_timeout_is_retried_then_answered(service: Service) -> None:
    service.upstream.enqueue(Reply(content=json.dumps(GOOD), delay_s=3), ok(GOOD))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 200 and r.json()["retries"] == 1
    assert service.metric("extraction_attempts_total", backend="mock", reason="retry_timeout") == 1


def test_slow_stream_within_the_timeout_is_read_and_past_it_is_retried(service: Service) -> None:
    # The mock sends headers at once, then the body in 10 pieces: 10 x 0.02 s fits the 2 s timeout,
    # 10 x 0.4 s does not (the read is abandoned mid-body and the call retried).
    service.upstream.enqueue(Reply(content=json.dumps(GOOD), trickle_s=0.02))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 200 and r.json()["data"] == GOOD and r.json()["retries"] == 0
    service.upstream.enqueue(Reply(content=json.dumps(GOOD), trickle_s=0.4), ok(GOOD))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 200 and r.json()["retries"] == 1
    assert service.metric("extraction_attempts_total", backend="mock", reason="retry_timeout") == 1
    assert service.metric("extraction_requests_total", task="invoice", backend="mock", outcome="ok") == 2


def test_deadline_from_options_gives_504(service: Service) -> None:
    service.upstream.enqueue(*(Reply(content=json.dumps(GOOD), delay_s=3) for _ in range(4)))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x", "options": {"timeout_s": 0.3}})
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert service.metric("extraction_requests_total", task="invoice", backend="mock", outcome="timeout") == 1


def test_truncated_output_is_reasked_at_the_reask_temperature(service: Service) -> None:
    # A greedy answer that ran into the limit would loop the same way at temperature 0: the re-ask samples.
    service.upstream.enqueue(Reply(content='{"company": "ACME', finish_reason="length"), ok(GOOD))
    body = service.post("/v1/extract", {"task": "invoice", "text": "x"}).json()
    assert body["attempts"] == 2 and body["data"] == GOOD
    assert [r["temperature"] for r in service.upstream.requests[-2:]] == [0.0, 0.7]
    assert [r["max_completion_tokens"] for r in service.upstream.requests[-2:]] == [128, 256]  # invoice: 128


def test_each_truncated_answer_doubles_the_limit_up_to_the_backends_unless_the_request_set_one(
    service: Service,
) -> None:
    cut = Reply(content='{"company": "ACME', finish_reason="length")
    service.upstream.enqueue(cut, cut, cut)
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 422 and r.json()["error"]["details"]["attempts"] == 3
    assert [q["max_completion_tokens"] for q in service.upstream.requests[-3:]] == [128, 256, 512]  # 512: the cap
    service.upstream.enqueue(cut, ok(GOOD))
    body = service.post("/v1/extract", {"task": "invoice", "text": "x", "options": {"max_output_tokens": 100}})
    assert body.json()["attempts"] == 2
    assert [q["max_completion_tokens"] for q in service.upstream.requests[-2:]] == [100, 100]  # the caller's cap


def test_a_raised_limit_stays_inside_the_context_window() -> None:
    from backends.base import BackendResponse, Usage
    from service.api_models import ExtractOptions
    from service.pipeline.attempts import REASK_MARGIN_TOKENS, _raised_limit

    cut = BackendResponse(text="{", usage=Usage(600, 128), model="m", finish_reason="length", latency_s=1.0)
    cfg = BackendConfig.model_validate(backend_entry("http://127.0.0.1:9/v1", context_window=1000))
    assert _raised_limit(128, cfg, ExtractOptions(), cut) == 1000 - 600 - 128 - REASK_MARGIN_TOKENS  # 208, not 256
    small = BackendConfig.model_validate(backend_entry("http://127.0.0.1:9/v1", context_window=800))
    assert _raised_limit(128, small, ExtractOptions(), cut) == 128  # no room: never lowered
    unknown = BackendConfig.model_validate(backend_entry("http://127.0.0.1:9/v1"))
    assert _raised_limit(128, unknown, ExtractOptions(), cut) == 256


def test_a_repeated_wrong_answer_raises_the_temperature_a_new_one_does_not(service: Service) -> None:
    wrong = {**GOOD, "total_amount": "1.190,00"}
    service.upstream.enqueue(ok(wrong), ok({**GOOD, "currency": 7}), ok(GOOD))
    assert service.post("/v1/extract", {"task": "invoice", "text": "x"}).json()["attempts"] == 3
    assert [r["temperature"] for r in service.upstream.requests[-3:]] == [0.0, 0.0, 0.0]
    service.upstream.enqueue(ok(wrong), ok(wrong), ok(GOOD))
    assert service.post("/v1/extract", {"task": "invoice", "text": "y"}).json()["attempts"] == 3
    assert [r["temperature"] for r in service.upstream.requests[-3:]] == [0.0, 0.0, 0.7]


@pytest.mark.parametrize("temperature", [0.0, 1.2])
def test_a_request_that_sets_its_temperature_keeps_it_on_re_asks(service: Service, temperature: float) -> None:
    service.upstream.enqueue(Reply(content='{"company": "ACME', finish_reason="length"), ok(GOOD))
    options = {"temperature": temperature}
    body = service.post("/v1/extract", {"task": "invoice", "text": "x", "options": options}).json()
    assert body["attempts"] == 2
    assert [r["temperature"] for r in service.upstream.requests[-2:]] == [temperature, temperature]


def test_a_raised_limit_is_only_as_high_as_the_budget_left_covers() -> None:
    from decimal import Decimal

    from service.api_models import ExtractOptions
    from service.pipeline.attempts import _affordable, _estimate, _Tally

    cfg = BackendConfig.model_validate(backend_entry("http://127.0.0.1:9/v1"))  # $0.006 per 1k output tokens
    messages = [{"role": "user", "content": "x" * 300}]  # ~100 input tokens in the estimate
    spent = _Tally()
    spent.cost = Decimal("0.001")
    assert _affordable(256, 128, ExtractOptions(), cfg, messages, spent) == 256  # no budget: as raised
    budget = float(spent.cost + _estimate(messages, 200, cfg))  # covers up to 200 output tokens
    got = _affordable(256, 128, ExtractOptions(max_cost_usd=budget), cfg, messages, spent)
    assert got == 200 and _estimate(messages, got + 1, cfg) + spent.cost > Decimal(str(budget))
    tight = float(spent.cost + _estimate(messages, 100, cfg))  # not even the old limit: left to the budget check
    assert _affordable(256, 128, ExtractOptions(max_cost_usd=tight), cfg, messages, spent) == 128


def test_broken_upstream_body_is_retried(service: Service) -> None:
    service.upstream.enqueue(Reply(body=b'{"id": "x", "choices": [{"mess'), ok(GOOD))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 200 and r.json()["retries"] == 1


def completion_body(content: dict[str, Any], usage: Any) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": json.dumps(content)}, "finish_reason": "stop"}
    return json.dumps({"id": "c", "object": "chat.completion", "model": "mock-model", "choices": [choice],
                       "usage": usage}).encode()  # fmt: skip


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -700, "completion_tokens": -150},
        {"prompt_tokens": 1e30, "completion_tokens": 10**30},
        {"prompt_tokens": "many", "completion_tokens": 1.5},
        None,
    ],
)
def test_an_implausible_upstream_usage_is_estimated_and_the_counters_stay_sane(service: Service, usage: Any) -> None:
    service.upstream.enqueue(Reply(body=completion_body(GOOD, usage)), ok(GOOD, usage=(700, 150)))
    r = service.post("/v1/extract", {"task": "invoice", "text": "Invoice from ACME GmbH ..."})
    assert r.status_code == 200 and r.json()["data"] == GOOD and r.json()["attempts"] == 1
    estimated = r.json()["usage"]
    prompt_chars = sum(len(m["content"]) for m in service.upstream.requests[0]["messages"])
    assert estimated == {"input_tokens": -(-prompt_chars // 4), "output_tokens": -(-len(json.dumps(GOOD)) // 4)}
    assert 0 < r.json()["cost_usd"] < 0.01
    r = service.post("/v1/extract", {"task": "invoice", "text": "Invoice from ACME GmbH ..."})
    assert r.status_code == 200  # and the next request is counted on top, as usual
    tokens = {d: service.metric("extraction_tokens_total", backend="mock", task="invoice", direction=d)
              for d in ("input", "output")}  # fmt: skip
    assert tokens == {"input": estimated["input_tokens"] + 700, "output": estimated["output_tokens"] + 150}
    cost = service.metric("extraction_cost_usd_total", backend="mock", task="invoice")
    assert cost == pytest.approx(0.003 + estimated["input_tokens"] * 0.003e-3 + estimated["output_tokens"] * 0.006e-3)
    assert service.metric("extraction_requests_total", task="invoice", backend="mock", outcome="ok") == 2


def test_backend_override_by_body_and_header(service: Service) -> None:
    service.upstream.enqueue(ok(GOOD), ok(GOOD))
    assert (
        service.post("/v1/extract", {"task": "invoice", "text": "x", "backend": "second"}).json()["backend"] == "second"
    )
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"}, headers={"X-Extraction-Backend": "second"})
    assert r.json()["backend"] == "second" and service.upstream.requests[-1]["model"] == "second-model"


def test_unconfigured_key_is_503_naming_the_variable(service: Service) -> None:
    r = service.post("/v1/extract", {"task": "invoice", "text": "x", "backend": "unset"})
    assert r.status_code == 503
    assert "NOT_SET_ANYWHERE_KEY" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"task": "invoice", "text": ""}, 400, "bad_request"),
        ({"task": "invoice", "text": "   "}, 400, "bad_request"),
        ({"task": "invoice"}, 400, "bad_request"),
        ({"task": "invoice", "text": 42}, 400, "bad_request"),
        ({"task": "invoice", "text": "x", "options": {"max_attempts": "many"}}, 400, "bad_request"),
        ({"task": "invoice", "text": "x", "options": {"max_output_tokens": "10"}}, 400, "bad_request"),  # no coercion
        ({"task": "invoice", "text": "x", "options": {"max_output_tokens": True}}, 400, "bad_request"),
        ({"task": "invoice", "text": "x", "options": {"timeout_s": "5"}}, 400, "bad_request"),
        ({"task": "invoice", "text": "x", "surprise": 1}, 400, "bad_request"),
        ({"text": "x"}, 400, "bad_request"),
        ({"task": "invoice", "schema": {"type": "object"}, "text": "x"}, 400, "bad_request"),
        ({"task": "nope", "text": "x"}, 400, "unknown_task"),
        ({"task": "invoice", "text": "x", "backend": "nope"}, 400, "unknown_backend"),
        ({"schema": {"type": "nonsense"}, "text": "x"}, 400, "invalid_schema"),
        ({"schema": "not a schema", "text": "x"}, 400, "bad_request"),
        ({"task": "invoice", "text": "x" * 2001}, 400, "text_too_long"),
        ({"schema": {"type": "object"}, "text": "x", "instructions": "i" * 10_001}, 400, "text_too_long"),
        ({"task": "invoice", "text": "x" * 30000}, 413, "payload_too_large"),
        ([1, 2, 3], 400, "bad_request"),
    ],
)
def test_bad_inputs_get_documented_errors(service: Service, body: Any, status: int, code: str) -> None:
    r = service.post("/v1/extract", body)
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["error"]["code"] == code and payload["error"]["message"]
    assert payload["request_id"]
    assert service.upstream.requests == []


@pytest.mark.parametrize("number", ["Infinity", "NaN", "1e999"])
def test_a_cost_cap_that_is_no_finite_number_is_400(service: Service, number: str) -> None:
    body = '{"task": "invoice", "text": "x", "options": {"max_cost_usd": ' + number + "}}"
    r = service.http.post("/v1/extract", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text
    assert service.upstream.requests == []


def test_long_task_and_backend_names_are_clipped_where_errors_quote_them(service: Service) -> None:
    for body in ({"task": "t" * 5_000, "text": "x"}, {"task": "invoice", "text": "x", "backend": "b" * 5_000}):
        r = service.post("/v1/extract", body)
        assert r.status_code == 400 and r.json()["error"]["code"] in {"unknown_task", "unknown_backend"}
        assert len(r.content) < 2_000, len(r.content)  # a name sent 5,000 long is not echoed twice in full
    assert len(service.http.get("/v1/tasks/" + "t" * 5_000).content) < 2_000


def test_malformed_json_body_is_400(service: Service) -> None:
    r = service.http.post(
        "/v1/extract", content=b'{"task": "invoice", "text": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert r.json()["error"]["details"]["reason"] == "malformed_json"
    assert service.metric("extraction_requests_total", task="-", backend="-", outcome="rejected") == 1


def test_a_body_not_sent_as_json_is_400_saying_so(service: Service) -> None:
    body = b'{"task": "invoice", "text": "x"}'
    r = service.http.post("/v1/extract", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_request" and error["details"]["reason"] == "content_type"
    assert "application/json" in error["message"] and "text/plain" in error["message"]
    assert service.upstream.requests == []


@pytest.mark.parametrize("content_type", ["application/jsonfoo", "application/x-json", None])
def test_a_body_of_a_type_fastapi_does_not_parse_says_content_type(service: Service, content_type: str | None) -> None:
    body = b'{"task": "invoice", "text": "x"}'
    headers = {"content-type": content_type} if content_type else {}
    r = service.http.post("/v1/extract", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["details"]["reason"] == "content_type", r.text
    assert (content_type or "not none") in r.json()["error"]["message"]  # FastAPI parses no type-less body


def test_a_compressed_body_is_refused_as_such_not_called_utf16(service: Service) -> None:
    import gzip

    body = gzip.compress(b'{"task": "invoice", "text": "x"}')
    r = service.http.post("/v1/extract", content=body,
                          headers={"content-type": "application/json", "content-encoding": "gzip"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["details"]["reason"] == "content_encoding", r.text
    assert "gzip" in r.json()["error"]["message"] and service.upstream.requests == []
    assert service.http.get("/v1/tasks", headers={"content-encoding": "gzip"}).status_code == 200  # no body: moot


def test_health_answers_get_and_head_and_a_405_lists_both(service: Service) -> None:
    for path in ("/healthz", "/readyz"):
        assert service.http.head(path).status_code in (200, 503)
        r = service.http.request("OPTIONS", path)
        assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}, path


def test_a_trailing_slash_is_a_404_problem_not_a_redirect_to_the_callers_host(service: Service) -> None:
    r = service.http.post("/v1/extract/", json={"task": "invoice", "text": "x"}, headers={"host": "evil.example"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found" and "location" not in r.headers


def test_batch_returns_per_item_results(service: Service) -> None:
    service.upstream.enqueue(ok(GOOD, usage=(10, 5)), ok(GOOD, usage=(10, 5)))
    items = [
        {"task": "invoice", "text": "a"},
        {"task": "nope", "text": "b"},
        {"task": "invoice", "text": "c"},
    ]
    r = service.post("/v1/extract/batch", {"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["succeeded"], body["failed"]) == (2, 1)
    by_index = {item["index"]: item for item in body["results"]}
    assert by_index[1]["error"]["code"] == "unknown_task" and by_index[1]["status"] == 400
    assert by_index[0]["result"]["data"] == GOOD and by_index[2]["ok"]
    assert body["usage"] == {"input_tokens": 20, "output_tokens": 10}


def test_a_malformed_batch_item_is_its_own_400_and_the_others_run(service: Service) -> None:
    service.upstream.enqueue(ok(GOOD))
    items = [{"task": "invoice"}, 5, {"task": "invoice", "text": "c", "x": 1}, {"task": "invoice", "text": "d"}]
    r = service.post("/v1/extract/batch", {"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["succeeded"], body["failed"]) == (1, 3)
    by_index = {item["index"]: item for item in body["results"]}
    assert by_index[3]["ok"] and by_index[3]["result"]["data"] == GOOD
    for index, where in ((0, "text: "), (1, "Input should be a valid dictionary"), (2, "x: ")):
        error = by_index[index]["error"]
        assert by_index[index]["status"] == 400 and error["code"] == "bad_request", error
        assert error["message"].startswith(f"invalid item: {where}"), error["message"]
        assert error["details"]["errors"]
    assert len(service.upstream.requests) == 1
    schema = service.http.get("/openapi.json").json()["components"]["schemas"]["BatchRequest"]
    assert schema["properties"]["items"]["items"] == {"$ref": "#/components/schemas/ExtractRequest"}


def test_batch_over_the_limit_is_400(service: Service) -> None:
    r = service.post("/v1/extract/batch", {"items": [{"task": "invoice", "text": "a"}] * 5})
    assert r.status_code == 400 and "limit is 4" in r.json()["error"]["message"]
    assert service.post("/v1/extract/batch", {"items": []}).status_code == 400


def test_catalogue_endpoints_never_show_keys(service: Service) -> None:
    tasks = service.http.get("/v1/tasks").json()
    assert [t["name"] for t in tasks] == [
        "contract_clause",
        "email_triage",
        "entities",
        "invoice",
        "receipt",
        "support_intent",
    ]
    assert all(t["backend"] == "mock" for t in tasks)
    detail = service.http.get("/v1/tasks/invoice").json()
    assert detail["schema"]["required"] == ["company", "invoice_date", "total_amount", "currency"]
    assert len(detail["examples"]) >= 3
    assert service.http.get("/v1/tasks/nope").json()["error"]["code"] == "unknown_task"
    r = service.http.get("/v1/backends")
    backends = {b["name"]: b for b in r.json()}
    assert backends["mock"]["default"] and backends["mock"]["configured"]
    assert backends["unset"]["configured"] is False
    assert backends["second"]["pricing"] == {"input_per_1k": 0.0008, "output_per_1k": 0.0008}
    assert "sk-test-secret-123" not in r.text
    assert all(b["base_url"] is None for b in backends.values())  # internal addresses: auth.show_base_urls
    assert service.upstream.url.removeprefix("http://") not in r.text  # type: ignore[attr-defined]


def test_a_request_id_that_is_no_id_is_replaced_and_the_backend_header_trimmed(service: Service) -> None:
    service.upstream.enqueue(ok(GOOD), ok(GOOD))
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"}, headers={"X-Request-ID": "x" * 5000})
    assert r.status_code == 200 and len(r.json()["request_id"]) < 100 and r.headers["x-request-id"] != "x" * 5000
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"}, headers={"X-Extraction-Backend": "second"})
    assert r.status_code == 200 and r.json()["backend"] == "second"
    # httpx sends no padded header values; servers behind proxies receive them
    assert _backend_header("  second \t") == "second" and _backend_header("   ") is None


def test_health_readiness_and_metrics(service: Service) -> None:
    assert service.http.get("/healthz").json() == {"status": "ok"}
    assert service.http.head("/healthz").status_code == 200  # probes that send HEAD
    assert service.http.head("/readyz").status_code == 200
    ready = service.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["backends"]["mock"]["status"] == "ok"
    assert ready.json()["backends"]["unset"]["status"] == "unconfigured"
    service.upstream.enqueue(ok(GOOD))
    service.post("/v1/extract", {"task": "invoice", "text": "x"})
    text = service.http.get("/metrics").text
    for name in (
        "extraction_requests_total",
        "extraction_request_duration_seconds_bucket",
        "extraction_backend_duration_seconds_bucket",
        "extraction_attempts_total",
        "extraction_tokens_total",
        "extraction_cost_usd_total",
        "extraction_inflight_requests",
        "extraction_schema_valid_total",
        "http_requests_total",
    ):
        assert name in text, name


def test_openapi_documents_error_responses(service: Service) -> None:
    spec = service.http.get("/openapi.json").json()
    responses = spec["paths"]["/v1/extract"]["post"]["responses"]
    assert {"200", "400", "413", "422", "502", "503", "504"} <= set(responses)


def test_unknown_route_is_json_404(service: Service) -> None:
    r = service.http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_metrics_add_up(service: Service) -> None:
    service.upstream.enqueue(ok(GOOD), ok("nope"), ok("nope"), ok("nope"), Reply(status=400))
    service.post("/v1/extract", {"task": "invoice", "text": "x"})
    service.post("/v1/extract", {"task": "invoice", "text": "x"})
    service.post("/v1/extract", {"task": "invoice", "text": "x"})
    service.post("/v1/extract", {"task": "invoice", "text": ""})
    outcomes = {
        o: service.metric("extraction_requests_total", task="invoice", backend="mock", outcome=o)
        for o in ("ok", "schema_invalid", "upstream_error")
    }
    assert outcomes == {"ok": 1, "schema_invalid": 1, "upstream_error": 1}
    assert service.metric("extraction_requests_total", task="-", backend="-", outcome="rejected") == 1


def test_while_draining_new_work_gets_503_and_probes_say_so(service: Service) -> None:
    service.app.state.extraction.drain.begin()  # what the SIGTERM handler does first
    r = service.post("/v1/extract", {"task": "invoice", "text": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    assert r.headers["retry-after"] == "1" and r.json()["request_id"] == r.headers["x-request-id"]
    assert service.http.get("/v1/tasks").status_code == 503
    ready = service.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert service.http.get("/healthz").status_code == 200  # alive: it is finishing work, not stuck
    assert service.upstream.requests == []
    assert service.metric("extraction_requests_total", task="-", backend="-", outcome="rejected") == 1


@pytest.mark.parametrize(
    ("schema", "says"),
    [(True, "`true` allows any JSON value"), (False, "`false` allows no value at all"),
     ({"not": {}}, "no answer can satisfy this schema"),
     ({"type": "object", "allOf": [{"not": True}]}, "no answer can satisfy this schema"),
     ({"type": "object", "allOf": [False]}, "`allOf` holds `false`")],
)  # fmt: skip
def test_a_schema_no_extraction_can_answer_is_400_invalid_schema_before_any_call(
    service: Service, schema: object, says: str
) -> None:
    r = service.post("/v1/extract", {"schema": schema, "text": "x"})  # was: 3 billed attempts, or a bad_request
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_schema", r.text
    assert says in r.json()["error"]["message"] and service.upstream.requests == []
    for not_boolean in ("true", 1):  # no coercion of strings or numbers into a boolean schema
        r = service.post("/v1/extract", {"schema": not_boolean, "text": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text


def test_not_beside_a_ref_in_draft_07_is_ignored_as_the_draft_says_not_called_unsatisfiable(service: Service) -> None:
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "$ref": "#/definitions/x", "not": {},
              "definitions": {"x": {"type": "object", "properties": {"a": {"type": "string"}}}}}  # fmt: skip
    service.upstream.enqueue(ok({"a": "b"}))
    r = service.post("/v1/extract", {"schema": schema, "text": "x"})
    assert r.status_code == 200 and r.json()["data"] == {"a": "b"}, r.text
