"""`extraction serve --workers 2`: one /metrics adds up the counters of every worker process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.mock_upstream import MockUpstream
from tests.conftest import backend_entry, write_config

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(upstream: MockUpstream, tmp_path: Path) -> Iterator[str]:
    config = write_config(tmp_path / "c.yaml", {"mock": backend_entry(f"{upstream.url}/v1")})  # type: ignore[attr-defined]
    port = free_port()
    env = {**os.environ, "MOCK_UPSTREAM_KEY": "k", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    (tmp_path / "prom").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # a child process gives no readiness signal but its health endpoint
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, "extraction serve exited"
        assert time.monotonic() < deadline, "extraction serve did not come up"
        time.sleep(0.2)
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
def single(upstream: MockUpstream, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    config = write_config(tmp_path / "c.yaml", {"mock": backend_entry(f"{upstream.url}/v1")})  # type: ignore[attr-defined]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", str(port)],
        env={**os.environ, "MOCK_UPSTREAM_KEY": "k"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "extraction serve did not come up"
        time.sleep(0.2)
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stderr:
        process.stderr.close()


def test_sigterm_drains_in_flight_requests(single: tuple[str, subprocess.Popen[bytes]], upstream: MockUpstream) -> None:
    import json
    import signal
    import threading

    from loadtest.mock_upstream import Reply

    url, process = single
    answer = {"company": "A", "invoice_date": "2024-01-01", "total_amount": 1.0, "currency": "EUR"}
    upstream.enqueue(Reply(content=json.dumps(answer), delay_s=1.5))
    results: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{url}/v1/extract", json={"task": "invoice", "text": "x"}, timeout=30)
        )
    )
    caller.start()
    assert upstream.wait_for_requests(1)  # the request is in flight once the upstream has it
    process.send_signal(signal.SIGTERM)
    caller.join(timeout=30)
    assert results and results[0].status_code == 200 and results[0].json()["data"] == answer
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    logs = process.stderr.read().decode() if process.stderr else ""
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    event = next(e for e in events if e.get("event") == "extraction")
    assert event["outcome"] == "ok" and event["input_tokens"] > 0 and "text" not in event
