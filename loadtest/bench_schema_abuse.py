"""What hostile ad-hoc schemas and answers cost the service, over real loopback HTTP:

    python -m loadtest.bench_schema_abuse             # the configured limits (defaults)
    python -m loadtest.bench_schema_abuse --raised    # limits raised so the big schemas are checked, not refused

For each case: the status and error code, the request's time, and the worst `/healthz` latency seen while it
ran (what every other request of the worker waited); then the size of `/metrics` after ad-hoc requests with a
100 KB field name. The README's threat-model figures come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings

RAISED = {"max_schema_bytes": 4_000_000, "max_schema_properties": 50_000, "schema_check_budget_s": 120}


def wide(properties: int) -> dict[str, Any]:
    fields = {f"field_{i:05d}": {"type": "string", "description": "x" * 40} for i in range(properties)}
    return {"type": "object", "properties": fields}


def pattern(regex: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"a": {"type": "string", "pattern": regex}}}


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("4,000 properties", wide(4000), "{}"),
    ("20,000 properties", wide(20_000), "{}"),
    ("^(a+)+$ vs 25 a + !", pattern("^(a+)+$"), json.dumps({"a": "a" * 25 + "!"})),
    ("^(a|a)*$ vs 40 a + !", pattern("^(a|a)*$"), json.dumps({"a": "a" * 40 + "!"})),
    ("600 KB broken answer", {"type": "object", "properties": {"a": {"type": "string"}}}, '{"a": "' + 'x"y' * 200_000),
]


def measure(url: str, upstream: MockUpstream, schema: dict[str, Any], answer: str) -> str:
    upstream.replies.clear()
    upstream.enqueue(Reply(content=answer))
    out: dict[str, Any] = {}

    def run() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            t0 = time.perf_counter()
            r = http.post("/v1/extract", json={"schema": schema, "text": "t", "options": {"max_attempts": 1}})
            out.update(status=r.status_code, code=r.json().get("error", {}).get("code", ""), s=time.perf_counter() - t0)

    worker = threading.Thread(target=run)
    worker.start()
    worst = 0.0
    with httpx.Client(base_url=url, timeout=300) as probe:
        while worker.is_alive():
            t0 = time.perf_counter()
            probe.get("/healthz")
            worst = max(worst, time.perf_counter() - t0)
    worker.join()
    return f"{out['status']} {out['code']:<20} {out['s']:6.2f} s   worst /healthz {worst:5.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raised", action="store_true", help="raise the schema limits: check, do not refuse")
    args = parser.parse_args()
    os.environ["BENCH_UPSTREAM_KEY"] = "sk-bench"
    upstream = MockUpstream()
    with ServerThread(upstream.app) as up:
        config = Path(tempfile.mkdtemp(prefix="schema-abuse-")) / "config.yaml"
        limits = {"max_body_bytes": 8_000_000, **(RAISED if args.raised else {})}
        config.write_text(yaml.safe_dump({
            "default_backend": "m", "tasks_dir": str(DEFAULT_CONFIG.parent / "tasks"), "limits": limits,
            "retry": {"deadline_s": 120}, "log_level": "error",
            "backends": {"m": {"kind": "openai", "base_url": f"{up.url}/v1", "model": "m",
                               "api_key_env": "BENCH_UPSTREAM_KEY", "timeout_s": 60}},
        }))  # fmt: skip
        with ServerThread(create_app(Settings(config=config))) as service:  # type: ignore[call-arg]
            for name, schema, answer in CASES:
                print(f"{name:<24} {measure(service.url, upstream, schema, answer)}")  # noqa: T201
            long_name = "n" * 100_000
            with httpx.Client(base_url=service.url, timeout=60) as http:
                for i in range(8):
                    names = [f"{long_name}{i}", *(f"f{i}_{j}" for j in range(50))]
                    upstream.enqueue(Reply(content=json.dumps(dict.fromkeys(names))))
                    schema = {"type": "object", "properties": {n: {"type": ["string", "null"]} for n in names}}
                    http.post("/v1/extract", json={"schema": schema, "text": "t"})
                size = len(http.get("/metrics").content)
            print(f"{'/metrics after 8 requests':<24} {size / 1e6:.2f} MB (each with a 100 KB field name)")  # noqa: T201


if __name__ == "__main__":
    main()
