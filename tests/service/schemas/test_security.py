"""Issue 14: an ad-hoc schema cannot fetch, crash, stall or bloat the service (real HTTP, loopback only)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.mock_upstream import Reply
from service.auth import hash_key
from service.pipeline.structured import MAX_GAPS
from tests.service.schemas.conftest import Service

pytestmark = pytest.mark.integration

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


class Listener:
    """A loopback TCP listener that counts connections: had anything been fetched, it would show here."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.sendall(b'HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{"type": "integer"}')
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    served = Listener()
    yield served
    served.close()


def remote_refs(listener: Listener, secret: Path) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{listener.port}"
    return [
        {"type": "object", "properties": {"a": {"$ref": f"{url}/x"}}},
        {"type": "object", "properties": {"a": {"$ref": secret.as_uri()}}},
        {"$id": f"{url}/root.json", "type": "object", "properties": {"a": {"$ref": "other.json"}}},  # relative
        {"type": "object", "properties": {"a": {"$dynamicRef": f"{url}/x#meta"}}},
        {"type": "object", "allOf": [{"$ref": f"{url}/x#/definitions/y"}]},
    ]


# 1. Nothing is fetched, nothing read from disk: 400 before any model call, with or without a key.
def test_references_outside_the_schema_are_never_followed(
    make_service: Callable[..., Service], listener: Listener, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"type": "string", "description": "TOP-SECRET-7f3a"}))
    keyed = {"auth": {"keys": [{"name": "adhoc", "key_sha256": hash_key("sk-adhoc-1"), "tasks": ["adhoc"]}]}}
    for svc, headers in ((make_service(), {}), (make_service(**keyed), {"Authorization": "Bearer sk-adhoc-1"})):
        for schema in remote_refs(listener, secret):
            r = svc.adhoc(schema, headers=headers)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "invalid_schema" and "resolve only inside the schema" in error["message"]
            assert "TOP-SECRET" not in r.text
    assert listener.connections == 0
    assert svc.upstream.requests == []


# 2. Schemas that used to crash validation after the model was paid: 400, nothing called.
LOOPS = {
    "self reference": {"$ref": "#"},
    "defs cycle": {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}},
                   "$defs": {"x": {"$ref": "#/$defs/y"}, "y": {"anyOf": [{"$ref": "#/$defs/x"}]}}},
    "missing def": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
}  # fmt: skip


def deep_items(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return {"type": "object", "properties": {"a": schema}}


@pytest.mark.parametrize("schema", [*LOOPS.values(), deep_items(200)], ids=[*LOOPS, "200 nested items"])
def test_schemas_that_crashed_after_billing_are_400_before_any_call(
    make_service: Callable[..., Service], schema: dict[str, Any]
) -> None:
    svc = make_service()
    r = svc.adhoc(schema, "{}")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_schema"
    assert svc.upstream.requests == [] and svc.metric("extraction_cost_usd_total", backend="mock", task="adhoc") == 0


def test_one_bad_schema_in_a_batch_is_its_own_400(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    svc.upstream.enqueue(Reply(content='{"city": "Lisbon"}'))
    items = [{"schema": {"$ref": "#"}, "text": "x"}, {"schema": CITY, "text": "I live in Lisbon"}]
    r = svc.http.post("/v1/extract/batch", json={"items": items})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert (first["status"], first["error"]["code"]) == (400, "invalid_schema")
    assert second["status"] == 200 and second["result"]["data"] == {"city": "Lisbon"}
    assert len(svc.upstream.requests) == 1


@pytest.mark.parametrize(
    ("answer", "words"),
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"a":' * 50_000, "nested too deeply")],
    ids=["deep JSON", "deep broken JSON for json-repair"],
)
def test_answers_nested_past_the_interpreter_are_failed_attempts(
    make_service: Callable[..., Service], answer: str, words: str
) -> None:
    svc = make_service(limits={"max_repair_chars": 1_000_000})
    r = svc.adhoc(CITY, answer, options={"max_attempts": 1})
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]["details"]["errors"][0]["message"]


# 3. Stalls.
def wide(properties: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"field_{i:05d}": {"type": "string", "description": "x" * 40}
                                             for i in range(properties)}}  # fmt: skip


def test_a_4000_property_schema_is_refused_at_once_by_the_limits(make_service: Callable[..., Service]) -> None:
    svc = make_service(limits={"max_body_bytes": 4_000_000, "max_schema_bytes": 4_000_000})
    r = svc.adhoc(wide(4000))
    assert r.status_code == 400
    assert r.json()["error"]["details"] == {"limit": "max_schema_properties", "measured": 4000, "allowed": 500}
    assert svc.upstream.requests == []


def probe_while(svc: Service, work: Callable[[], Any]) -> tuple[list[float], Any]:
    """Run `work` in a thread; meanwhile GET /metrics again and again, keeping the latency of each probe that
    found an extraction in flight (the gauge says so): what other requests wait while the work runs."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    during: list[float] = []
    while thread.is_alive():
        t0 = time.perf_counter()
        text = svc.http.get("/metrics").text
        if "extraction_inflight_requests 1.0" in text:
            during.append(time.perf_counter() - t0)
    thread.join()
    return during, result[0]


def test_checking_a_big_schema_does_not_hold_other_requests(make_service: Callable[..., Service]) -> None:
    svc = make_service(limits={"max_body_bytes": 4_000_000, "max_schema_bytes": 4_000_000,
                               "max_schema_properties": 20_000, "schema_check_budget_s": 60})  # fmt: skip
    t0 = time.perf_counter()
    during, r = probe_while(svc, lambda: svc.adhoc(wide(4000), "{}", options={"max_attempts": 1}))
    whole = time.perf_counter() - t0
    assert r.status_code in (200, 422), r.text  # checked, compiled, called
    assert len(during) >= 3, "the check was too quick to observe"
    # The loop kept serving while a worker thread checked the schema: had it run on the loop, one probe would
    # have waited for most of the whole check (relative, so a slow or busy machine does not make it flaky).
    assert max(during) < whole / 3, (max(during), whole)


def test_a_schema_over_its_check_budget_is_400_before_any_call(make_service: Callable[..., Service]) -> None:
    svc = make_service(limits={"max_body_bytes": 4_000_000, "max_schema_bytes": 4_000_000,
                               "max_schema_properties": 20_000, "schema_check_budget_s": 0.01})  # fmt: skip
    r = svc.adhoc(wide(4000))
    assert r.status_code == 400 and "limits.schema_check_budget_s" in r.json()["error"]["message"]
    assert svc.upstream.requests == []


def test_a_backtracking_pattern_stops_at_the_validation_budget(make_service: Callable[..., Service]) -> None:
    svc = make_service(limits={"validation_budget_s": 0.2})
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a|a)*$"}}}
    during, r = probe_while(svc, lambda: svc.adhoc(schema, {"a": "a" * 40 + "!"}))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_timeout" and error["details"]["attempts"] == 1
    assert len(svc.upstream.requests) == 1  # no re-ask on a schema too costly to validate
    assert not during or max(during) < 0.5
    assert svc.metric("extraction_requests_total", task="adhoc", backend="mock", outcome="schema_invalid") == 1
    # The issue's own pattern: the `regex` engine does not backtrack on it at all.
    r = svc.adhoc({"type": "object", "properties": {"a": {"pattern": "^(a+)+$"}}}, {"a": "a" * 25 + "!"},
                  options={"max_attempts": 1})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "schema_validation_failed"


def test_json_repair_is_not_given_600_kb(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    broken = '{"city": "' + 'x"y' * 200_000
    r = svc.adhoc(CITY, broken, options={"max_attempts": 1})
    assert r.status_code == 422
    assert "too long to repair (limit 32768)" in r.json()["error"]["details"]["errors"][0]["message"]


# 4. Memory.
def test_compiled_schemas_are_bounded_in_bytes(make_service: Callable[..., Service]) -> None:
    svc = make_service(limits={"schema_cache_bytes": 300_000})
    for i in range(12):
        schema = {**CITY, "description": f"{i}:" + "d" * 40_000}
        assert svc.adhoc(schema, '{"city": "x"}').status_code == 200
    cache = svc.state.extractor.checks.cache
    assert cache.bytes <= 300_000 and 0 < len(cache) < 12
    again = {**CITY, "description": "11:" + "d" * 40_000}  # the most recent is still there: not compiled again
    before = cache.bytes
    assert svc.adhoc(again, '{"city": "x"}').status_code == 200 and cache.bytes == before


def test_structured_output_decisions_stay_small(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(400)}}  # none required
    assert svc.adhoc(schema, "{}").json()["structured_output"] == "json_object"
    [compiled] = svc.state.extractor.checks.cache.entries()
    [decision] = compiled.memo.values()
    assert decision.reason == "engine" and len(decision.gaps) <= MAX_GAPS


# 5. Metrics cardinality.
def test_ad_hoc_field_names_never_become_metric_labels(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    long_name = "n" * 10_000
    for i in range(40):
        names = [f"field_{i}_{j}" for j in range(3)] + ([long_name] if i == 0 else [])
        schema = {"type": "object", "properties": {n: {"type": ["string", "null"]} for n in names}}
        assert svc.adhoc(schema, {n: None for n in names}).status_code == 200
    text = svc.http.get("/metrics").text
    assert "field_0_0" not in text and long_name not in text
    assert svc.metric("extraction_field_null_total", task="adhoc", field="-") == 40 * 3 + 1
    assert len(text) < 200_000
    svc.upstream.enqueue(Reply(content=json.dumps({"company": None, "invoice_date": None, "total_amount": 1,
                                                   "currency": "EUR"})))  # fmt: skip
    assert svc.http.post("/v1/extract", json={"task": "invoice", "text": "x"}).status_code == 200
    assert svc.metric("extraction_field_null_total", task="invoice", field="company") == 1  # named tasks: by field


# The engine guard: schemas too big or too repetitive for a grammar go in JSON mode, counted.
@pytest.mark.parametrize(
    ("schema", "sent"),
    [
        (CITY, "json_schema"),
        ({**CITY, "properties": {"city": {"type": "string", "maxLength": 100_000}}}, "json_object"),
        ({**CITY, "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,5000}$"}}}, "json_object"),
        (
            {
                "type": "object",
                "properties": {
                    f"p{i}": {"type": "object", "properties": {"q": {"type": "integer"}}} for i in range(60)
                },
            },
            "json_object",
        ),  # fmt: skip
        ({**CITY, "description": "d" * 3000}, "json_object"),
    ],
    ids=["small", "maxLength", "pattern repetition", "many subschemas", "bytes"],
)
def test_schemas_a_grammar_engine_would_choke_on_degrade(
    make_service: Callable[..., Service], schema: dict[str, Any], sent: str
) -> None:
    svc = make_service(backend={"kind": "vllm", "structured_limits": {"max_bytes": 2048, "max_nodes": 100,
                                                                       "max_repeat": 1000}})  # fmt: skip
    r = svc.adhoc(schema, '{"city": "x"}')
    assert r.status_code == 200, r.text
    assert svc.upstream.requests[-1]["response_format"]["type"] == sent == r.json()["structured_output"]
    expected = 1 if sent == "json_object" else 0
    assert svc.metric("extraction_structured_output_degraded_total", backend="mock", task="adhoc") == expected
