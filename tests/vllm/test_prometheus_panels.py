"""A real Prometheus scrapes the service and the real vLLM server while traffic flows; every dashboard panel's
PromQL must then return data through Prometheus' HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from tests.deploy.test_deploy_files import panel_exprs
from tests.vllm.conftest import Stack, free_port

NO_PROMETHEUS = shutil.which("prometheus") is None
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.integration,
    pytest.mark.skipif(NO_PROMETHEUS, reason="prometheus missing (make test installs it)"),
]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def wait_for(check, what: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll `check` (a query against a server) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    api = urlparse(stack.service_url)
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yaml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(DEPLOY / "prometheus/alerts.yaml")]
    targets = {"extraction-api": f"{api.hostname}:{api.port}", "vllm": f"127.0.0.1:{stack.vllm.cfg.port}"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yaml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "prometheus to start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expr: str) -> list[dict[str, object]]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


def test_every_dashboard_panel_returns_data(stack: Stack, prometheus: str) -> None:
    def traffic() -> None:
        with httpx.Client(base_url=stack.service_url, timeout=300) as client:
            for task, text in (
                ("email_triage", "I cannot log in since yesterday."),
                ("support_intent", "Card lost!"),
                ("entities", "thanks, see you"),  # nothing to find: feeds the null/empty-field panel
                ("invoice", "Roses are red, violets are blue."),
            ):
                assert client.post("/v1/extract", json={"task": task, "text": text}).status_code == 200
            client.post("/v1/extract", json={"task": "email_triage", "text": ""})  # a rejection

    def total() -> float:
        result = query(prometheus, "sum(extraction_requests_total)")
        return float(result[0]["value"][1]) if result else 0.0  # type: ignore[index]

    traffic()
    first = wait_for(lambda: total() or None, "the first scrape of our metrics")
    traffic()  # a second batch, so every rate() window sees counters rise
    wait_for(lambda: total() > first, "a scrape after the second batch")
    wait_for(lambda: query(prometheus, "vllm:generation_tokens_total"), "vLLM's metrics")
    empty = []
    for title, expr in panel_exprs():
        concrete = expr.replace("$__rate_interval", "2m").replace('"$backend"', '".*"').replace('"$task"', '".*"')
        if not query(prometheus, concrete):
            empty.append(f"{title}: {concrete}")
    assert empty == []
    up = query(prometheus, 'up{job=~"extraction-api|vllm"}')
    assert sorted(float(s["value"][1]) for s in up) == [1.0, 1.0]  # type: ignore[index]
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"][0]["rules"]
    assert {r["health"] for r in rules} == {"ok"}, json.dumps(rules)[:500]
