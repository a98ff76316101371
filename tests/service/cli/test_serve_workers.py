"""`extraction serve --workers 2`: one /metrics adds up the counters of every worker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.mock_upstream import MockUpstream, Reply
from tests.conftest import backend_entry, free_port, write_config

pytestmark = pytest.mark.integration


def start_serve(
    config: Path, workers: int = 1, env: dict[str, str] | None = None, stderr: int = subprocess.DEVNULL
) -> tuple[str, subprocess.Popen[bytes]]:
    """`extraction serve` as a process, once its health endpoint answers (a child process gives no other
    readiness signal)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", str(port),
         "--workers", str(workers)],
        env={**os.environ, "MOCK_UPSTREAM_KEY": "k", **(env or {})}, stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "extraction serve did not come up"
        time.sleep(0.2)


@pytest.fixture
def served(upstream: MockUpstream, tmp_path: Path) -> Iterator[str]:
    config = write_config(tmp_path / "c.yaml", {"mock": backend_entry(f"{upstream.url}/v1")})  # type: ignore[attr-defined]
    (tmp_path / "prom").mkdir()
    url, process = start_serve(config, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")})
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_metrics_add_up_across_workers(served: str) -> None:
    with httpx.Client(base_url=served, timeout=10) as client:
        for _ in range(10):  # new connections: the kernel spreads them over both workers
            with httpx.Client(base_url=served, timeout=10) as fresh:
                assert fresh.post("/v1/extract", json={"task": "invoice", "text": "x"}).status_code == 200
        text = client.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("extraction_requests_total{"))
    assert 'outcome="ok"' in line and line.endswith(" 10.0")


@pytest.fixture
def single(
    upstream: MockUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    config = write_config(tmp_path / "c.yaml", {"mock": backend_entry(f"{upstream.url}/v1")})  # type: ignore[attr-defined]
    url, process = start_serve(config, workers=getattr(request, "param", 1), stderr=subprocess.PIPE)
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stderr:
        process.stderr.close()


@pytest.mark.parametrize("single", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
def test_sigterm_drains_in_flight_requests(single: tuple[str, subprocess.Popen[bytes]], upstream: MockUpstream) -> None:
    """In flight when SIGTERM comes: answered. Arriving during the drain: 503 shutting_down. Then it exits.
    With 2 workers the supervisor passes SIGTERM on: the idle worker stops at once, the busy one drains."""
    url, process = single
    answer = {"company": "A", "invoice_date": "2024-01-01", "total_amount": 1.0, "currency": "EUR"}
    release = threading.Event()
    upstream.enqueue(Reply(content=json.dumps(answer), hold=release))
    results: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{url}/v1/extract", json={"task": "invoice", "text": "x"}, timeout=60)
        )
    )
    caller.start()
    try:
        assert upstream.wait_for_requests(1)  # the request is in flight once the upstream has it
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (ready := httpx.get(f"{url}/readyz", timeout=5)).status_code != 503:  # the signal is async
            assert time.monotonic() < deadline, "readyz never reported the drain"
        assert ready.json()["status"] == "draining"
        late = httpx.post(f"{url}/v1/extract", json={"task": "invoice", "text": "y"}, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        assert late.headers["retry-after"] == "1" and late.json()["request_id"]
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'extraction_requests_total{backend="-",outcome="rejected",task="-"} 1.0' in metrics
        assert process.poll() is None  # still up: the first request holds it
    finally:
        release.set()
        caller.join(timeout=60)
    assert results and results[0].status_code == 200 and results[0].json()["data"] == answer
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    assert len(upstream.requests) == 1  # the late request never reached the model
    logs = process.stderr.read().decode() if process.stderr else ""
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    event = next(e for e in events if e.get("event") == "extraction")
    assert event["outcome"] == "ok" and event["input_tokens"] > 0 and "text" not in event
    assert any(e.get("event") == "drained" and e["complete"] for e in events)
