"""Bodies the API cannot take, over real loopback HTTP: each gets its documented 400 or 413 (never the
undocumented `http_error`, never a 500) and counts once in extraction_requests_total as rejected."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.config import Settings
from service.metrics import sample
from tests.conftest import backend_entry

pytestmark = pytest.mark.integration

LIMIT = 20_000
GOOD = {"company": "ACME GmbH", "invoice_date": "2024-03-14", "total_amount": 1190.0, "currency": "EUR"}
OUTCOMES = ("ok", "schema_invalid", "upstream_error", "timeout", "rejected", "cancelled")
JSON = {"content-type": "application/json"}


class Api:
    def __init__(self, app: Any, url: str) -> None:
        self.app = app
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, content: Any, path: str = "/v1/extract") -> httpx.Response:
        return self.http.post(path, content=content, headers=JSON)

    def counts(self) -> dict[str, float]:
        registry = self.app.state.extraction.metrics.registry
        return {
            o: sample(registry, "extraction_requests_total", task="-", backend="-", outcome=o) for o in OUTCOMES
        } | {"invoice_ok": sample(registry, "extraction_requests_total", task="invoice", backend="mock", outcome="ok")}


@pytest.fixture
def api(upstream: MockUpstream, make_settings: Callable[..., Settings]) -> Iterator[Api]:
    url = f"{upstream.url}/v1"  # type: ignore[attr-defined]
    settings = make_settings({"mock": backend_entry(url)}, limits={"max_body_bytes": LIMIT, "max_batch_items": 2})
    app = create_app(settings)
    with ServerThread(app) as server:
        a = Api(app, server.url)
        yield a
        a.http.close()


def chunks(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """A body httpx sends with `Transfer-Encoding: chunked` and no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def big_text(chars: int) -> bytes:
    return json.dumps({"task": "invoice", "text": "x" * chars}).encode()


def big_batch() -> bytes:
    return json.dumps({"items": [{"task": "invoice", "text": "x" * LIMIT}]}).encode()


@pytest.mark.parametrize("path", ["/v1/extract", "/v1/extract/batch"])
def test_a_chunked_body_over_the_limit_is_413_and_counted(api: Api, path: str) -> None:
    body = (
        big_text(LIMIT) if path == "/v1/extract" else json.dumps({"items": [{"task": "invoice", "text": "x" * LIMIT}]})
    )
    r = api.post(chunks(body.encode() if isinstance(body, str) else body), path)
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and error["details"] == {"limit_bytes": LIMIT}
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert api.counts()["rejected"] == 1


def test_a_chunked_body_within_the_limit_is_served(api: Api, upstream: MockUpstream) -> None:
    upstream.enqueue(Reply(content=json.dumps(GOOD)))
    r = api.post(chunks(big_text(LIMIT - 1000), size=1000))
    assert r.status_code == 200 and r.json()["data"] == GOOD
    assert upstream.requests[0]["messages"][-1]["content"].count("x") >= LIMIT - 1000  # the whole body arrived


def test_a_declared_length_over_the_limit_is_413_and_counted(api: Api) -> None:
    r = api.post(big_text(LIMIT))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert api.counts()["rejected"] == 1


DEEP = b'{"task": "invoice", "text": "x", "options": ' + b"[" * 5000 + b"]" * 5000 + b"}"


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (b'{"task": "invoice", "text": "caf\xe9"}', "invalid_utf8", "not valid UTF-8 (byte 0xe9 at offset 32)"),
        (b'{"task": "invoice", "text": "x", "options": {"max_attempts": ' + b"1" * 5000 + b"}}",
         "integer_too_long", "more than 4300 digits"),
        (DEEP, "too_deep", "nested too deeply"),
        # Python's parser guesses UTF-16 and UTF-32 from the NUL bytes and would have accepted these.
        *[('{"task": "invoice", "text": "Caf\u00e9"}'.encode(encoding), "invalid_utf8", "looks like UTF-16 or UTF-32")
          for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le")],
    ],
)  # fmt: skip
def test_bodies_python_cannot_parse_are_400_bad_request(api: Api, body: bytes, reason: str, says: str) -> None:
    r = api.post(body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_request" and says in error["message"]
    assert error["details"]["reason"] == reason
    assert api.counts()["rejected"] == 1


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"task": "\\ud800", "text": "x"}', "lone surrogate"),
        (b'{"task": "invoice", "text": "x", "backend": "\\udfff"}', "lone surrogate"),
        (b'{"schema": {"type": "object", "\\ud800": 1}, "text": "x"}', "lone surrogate"),
        (b'{"schema": {"type": "string", "maxLength": 1' + b"0" * 30 + b'}, "text": "x"}', "64-bit"),
        (b'{"schema": {"type": "object", "x": ' + b"[" * 300 + b"]" * 300 + b'}, "text": "x"}', "254 levels"),
    ],
)
def test_json_that_could_not_be_sent_upstream_is_400_not_500(api: Api, body: bytes, says: str) -> None:
    r = api.post(body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_request" and says in r.json()["error"]["message"]
    assert api.counts()["rejected"] == 1


def test_a_batch_item_that_could_not_be_sent_upstream_is_its_own_400_and_the_other_runs(
    api: Api, upstream: MockUpstream
) -> None:
    upstream.enqueue(Reply(content=json.dumps(GOOD)))
    r = api.post(
        b'{"items": [{"task": "\\ud800", "text": "x"}, {"task": "invoice", "text": "ACME"}]}', "/v1/extract/batch"
    )
    assert r.status_code == 200, r.text
    bad, good = r.json()["results"]
    assert bad["status"] == 400 and bad["error"]["code"] == "bad_request"
    assert bad["error"]["message"].startswith("invalid item: ") and "lone surrogate" in bad["error"]["message"]
    assert good["ok"] and good["result"]["data"] == GOOD
    assert api.counts()["rejected"] == 1 and api.counts()["invoice_ok"] == 1


def test_every_bad_body_counts_once_and_none_is_http_error(api: Api, upstream: MockUpstream) -> None:
    upstream.enqueue(Reply(content=json.dumps(GOOD)))
    sent = [
        api.post(big_text(LIMIT)),
        api.post(chunks(big_text(LIMIT))),
        api.post(b'{"task": "invoice", "text": "\xff"}'),
        api.post(b'{"text": ' + b"9" * 4400 + b"}"),
        api.post(DEEP),
        api.post(b'{"task": "invoice", "text": '),
        api.post(b'{"task": "\\ud800", "text": "x"}'),
        api.post(json.dumps({"items": [{"task": "invoice", "text": "x"}] * 3}), "/v1/extract/batch"),
        api.post(b'{"items": [\xff]}', "/v1/extract/batch"),
        api.post(
            chunks(json.dumps({"items": [{"task": "invoice", "text": "x" * LIMIT}]}).encode()), "/v1/extract/batch"
        ),
        api.post(json.dumps({"task": "invoice", "text": "fine"})),
    ]
    assert [r.status_code for r in sent] == [413, 413, 400, 400, 400, 400, 400, 400, 400, 413, 200]
    assert all(r.json()["error"]["code"] in ("bad_request", "payload_too_large") for r in sent[:-1])
    assert api.counts() == {"rejected": 10, "invoice_ok": 1} | {o: 0 for o in OUTCOMES if o != "rejected"}


def test_a_caller_gone_before_its_body_arrived_counts_as_cancelled(api: Api) -> None:
    counted = threading.Event()
    requests = api.app.state.extraction.metrics.requests
    labels = requests.labels

    def signalling(*values: str) -> Any:
        child = labels(*values)
        inc = child.inc

        def inc_and_signal(amount: float = 1) -> None:
            inc(amount)
            counted.set()

        child.inc = inc_and_signal
        return child

    requests.labels = signalling
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/extract HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"task": "invoice", "text": "')  # fmt: skip
    assert counted.wait(timeout=10)
    assert api.counts()["cancelled"] == 1 and api.counts()["rejected"] == 0
