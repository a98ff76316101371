"""Soak under injected faults: Locust against the service in front of a chaotic loopback upstream.

    python -m loadtest.soak --duration 3m --users 16 --out var/soak

The upstream fails at random (5xx, 429, hangs past the timeout, resets mid-body, truncated bodies: rates
set by --chaos); the service has a fallback chain and circuit breakers. Reports the error rate and P95 the
callers saw, and checks the books: every request Locust sent is counted exactly once among the service's
outcomes (no request lost, none answered twice). Exit 1 when the books do not balance.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtest.mock_upstream import MockUpstream, ServerThread
from loadtest.run import LoadArgs, run_once
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings
from service.terminal import console as make_console

DEFAULT_CHAOS = "500=0.05,429=0.03,hang=0.01,reset=0.01,broken=0.02"


def outcomes(metrics_text: str) -> tuple[dict[str, float], float]:
    """(extraction outcomes, HTTP responses to POST /v1/extract) from one scrape."""
    totals: dict[str, float] = {}
    responses = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if family.name == "extraction_requests" and s.name.endswith("_total"):
                totals[s.labels["outcome"]] = totals.get(s.labels["outcome"], 0.0) + s.value
            if family.name == "http_requests" and s.name.endswith("_total") and s.labels["handler"] == "/v1/extract":
                responses += s.value
    return totals, responses


def soak(duration: str, users: int, chaos: dict[str, float], out: Path, seed: int = 0) -> dict[str, Any]:
    upstream = MockUpstream(chaos=chaos, seed=seed)
    upstream.hang_s = 2.0
    with ServerThread(upstream.app) as up:
        entry = {"kind": "vllm", "base_url": f"{up.url}/v1", "timeout_s": 1.0, "max_retries": 2,
                 "circuit": {"failure_threshold": 8, "reset_after_s": 2}}  # fmt: skip
        config = Path(tempfile.mkdtemp(prefix="soak-")) / "config.yaml"
        config.write_text(yaml.safe_dump({
            "default_backend": "primary",
            "tasks_dir": str(DEFAULT_CONFIG.parent / "tasks"),
            "backends": {"primary": {**entry, "model": "primary-model", "fallback": ["secondary"]},
                         "secondary": {**entry, "model": "secondary-model"}},
            "retry": {"deadline_s": 10, "backoff_initial_s": 0.02, "backoff_max_s": 0.2},
            "log_level": "warning",
        }))  # fmt: skip
        app = create_app(Settings(config=config))  # type: ignore[call-arg]
        with ServerThread(app) as api:
            args = LoadArgs(host=api.url, users=users, spawn_rate=users, duration=duration, batch_share=0.0,
                            think="0,0.1", out=out)  # fmt: skip
            _, summary = run_once(args, out / "locust")
            counted, responses = outcomes(app.state.extraction.metrics.render().decode())
    # Locust leaves out requests still in flight when the run stops, so the service can count a few more.
    balanced = sum(counted.values()) == responses and responses >= summary["requests"]
    result = {
        "duration": duration,
        "users": users,
        "chaos": chaos,
        "requests": summary["requests"],
        "requests_per_s": summary["requests_per_s"],
        "error_rate": summary["error_rate"],
        "p50_ms": summary["p50_ms"],
        "p95_ms": summary["p95_ms"],
        "p99_ms": summary["p99_ms"],
        "service_outcomes": counted,
        "service_responses": responses,
        "upstream_calls": len(upstream.requests),
        "books_balance": balanced,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", default="3m")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--chaos", default=DEFAULT_CHAOS, help="fault=probability,... (500, 429, hang, reset, broken)")
    p.add_argument("--out", type=Path, default=Path("var/soak"))
    args = p.parse_args()
    chaos = {k: float(v) for k, v in (part.split("=") for part in args.chaos.split(","))}
    args.out.mkdir(parents=True, exist_ok=True)
    r = soak(args.duration, args.users, chaos, args.out)
    make_console().print(
        f"{r['requests']} requests ({r['requests_per_s']:.1f}/s) under chaos {args.chaos}: error rate "
        f"{r['error_rate']:.2%}, P50 {r['p50_ms']:.0f} ms, P95 {r['p95_ms']:.0f} ms, P99 {r['p99_ms']:.0f} ms; "
        f"{r['upstream_calls']} upstream calls; outcomes {r['service_outcomes']}; books balance: {r['books_balance']}"
    )
    raise SystemExit(0 if r["books_balance"] else 1)


if __name__ == "__main__":
    main()
