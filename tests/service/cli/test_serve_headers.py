"""`extraction serve` bounds a request's head: 431 `headers_too_large` past `limits.max_header_bytes`, before
the app runs, whatever the headers' size or number; a head within the limit passes whatever its body. And 408
`request_timeout` for a head or a body too slow to arrive, never for an answer the app takes long over."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from tests.conftest import backend_entry, write_config
from tests.service.cli.test_serve_workers import start_serve

pytestmark = pytest.mark.integration

LIMIT = 4096
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, MockUpstream]]:
    mock = MockUpstream()
    with ServerThread(mock.app) as upstream:
        config = write_config(
            tmp_path_factory.mktemp("headers") / "c.yaml",
            {"mock": backend_entry(f"{upstream.url}/v1")},
            limits={"max_header_bytes": LIMIT, "header_timeout_s": TIMEOUT_S, "body_timeout_s": TIMEOUT_S},
        )
        url, process = start_serve(config)
        host, port = url.removeprefix("http://").split(":")
        try:
            yield host, int(port), mock
        finally:
            process.terminate()
            process.wait(timeout=30)


def exchange(address: tuple[str, int], pieces: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Sends `pieces` one send() each, reads until the server closes or answers; (status, headers, body)."""
    with socket.create_connection(address, timeout=30) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent: read what it said
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _expected(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data) + 1


def request(headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = ["POST /v1/extract HTTP/1.1", "Host: test", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


ANSWER = {"company": "ACME", "invoice_date": "2024-01-01", "total_amount": 10.0, "currency": "EUR"}
BODY = json.dumps({"task": "invoice", "text": "Invoice from ACME, total 10 EUR"}).encode()


def test_one_large_header_sent_in_pieces_gets_431(server: tuple[str, int, MockUpstream]) -> None:
    host, port, mock = server
    before = len(mock.requests)
    status, headers, body = exchange((host, port), pieces(request([("X-Big", "a" * 200_000)], BODY), 1024))
    assert status == 431
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "headers_too_large" and error["details"] == {"limit_bytes": LIMIT}
    assert str(LIMIT) in error["message"]
    assert len(mock.requests) == before  # refused before the app: nothing went upstream


def test_many_small_headers_get_431(server: tuple[str, int, MockUpstream]) -> None:
    host, port, _ = server
    many = [(f"X-H{i}", "v") for i in range(5000)]
    status, _, body = exchange((host, port), pieces(request(many, BODY), 512))
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large"


def test_a_head_within_the_limit_passes_with_a_large_body_in_the_same_send(
    server: tuple[str, int, MockUpstream],
) -> None:
    """The body is not the head: 1 MB of JSON (whitespace-padded) right behind 3 KB of headers, one send()."""
    host, port, _ = server
    padded = BODY[:-1] + b" " * 1_000_000 + b"}"
    status, _, body = exchange((host, port), [request([("X-Big", "a" * 3000)], padded)])
    assert status == 200, body[:300]
    assert set(json.loads(body)["data"]) == {"company", "invoice_date", "total_amount", "currency"}


def test_pipelined_requests_within_the_limit_are_all_answered(server: tuple[str, int, MockUpstream]) -> None:
    host, port, _ = server
    one = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n"
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(one * 5)
        data = b""
        while data.count(b"HTTP/1.1 200") < 5:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data.count(b'HTTP/1.1 200')} answers"
            data += chunk
    assert b"431" not in data


def test_without_httptools_the_server_runs_h11_with_the_same_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.http_server as http_server

    options = http_server.protocol_options(LIMIT, 2.0, 3.0)
    assert options["http"].keywords == {"max_header_bytes": LIMIT, "header_timeout_s": 2.0, "body_timeout_s": 3.0}
    monkeypatch.setattr(http_server, "HttpToolsProtocol", None)
    assert http_server.protocol_options(LIMIT, 2.0, 3.0) == {"http": "h11", "h11_max_incomplete_event_size": LIMIT}


def test_a_head_exactly_at_the_limit_passes_and_one_byte_more_is_refused(
    server: tuple[str, int, MockUpstream],
) -> None:
    """The count is exact, wherever the reads split the head: here one send(), so one read on loopback."""
    host, port, _ = server
    base = request([("X-Pad", "")], BODY)
    head_len = base.index(b"\r\n\r\n") + 4
    fits = request([("X-Pad", "p" * (LIMIT - head_len))], BODY)
    assert fits.index(b"\r\n\r\n") + 4 == LIMIT
    assert exchange((host, port), [fits])[0] == 200
    over = request([("X-Pad", "p" * (LIMIT - head_len + 1))], BODY)
    assert exchange((host, port), [over])[0] == 431
    assert exchange((host, port), pieces(over, 100))[0] == 431


def test_a_large_head_pipelined_behind_a_small_request_is_refused(server: tuple[str, int, MockUpstream]) -> None:
    host, port, _ = server
    small = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
    big = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"b" * (3 * LIMIT) + b"\r\n\r\n"
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(small + big)
        data = b""
        while chunk := sock.recv(65536):  # the server closes after the 431
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 431" in data


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/extract HTTP/1.1\r\nHost: test\r\nX-Slow: 1", request([], BODY)[:-10]],
    ids=["nothing", "half-a-head", "half-a-body"],
)
def test_a_client_too_slow_to_send_its_request_gets_408_and_is_closed(
    server: tuple[str, int, MockUpstream], sent: bytes
) -> None:
    host, port, mock = server
    before = len(mock.requests)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(sent)
        data = b""
        while chunk := sock.recv(65536):  # blocks until the server gives up on the request and closes
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and error["details"]["timeout_s"] == TIMEOUT_S
    assert len(mock.requests) == before


def test_an_answer_that_takes_longer_than_the_read_timeouts_is_not_cut(server: tuple[str, int, MockUpstream]) -> None:
    """Only reading the request is timed: the upstream here takes 3x the timeouts to answer."""
    host, port, mock = server
    mock.enqueue(Reply(content=json.dumps(ANSWER), delay_s=3 * TIMEOUT_S))
    status, _, body = exchange((host, port), [request([], BODY)])
    assert status == 200 and json.loads(body)["data"] == ANSWER
