"""A short, bounded Locust run against the service in front of the fast loopback upstream."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest.mock_upstream import MockUpstream, ServerThread
from loadtest.run import histogram_quantile
from service.app import create_app
from service.cli import app
from service.config import Settings
from tests.conftest import backend_entry


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    before = {0.1: 0.0, 0.5: 0.0, 1.0: 0.0, float("inf"): 0.0}
    after = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, before, after) == pytest.approx(0.1)
    assert histogram_quantile(0.95, before, after) == pytest.approx(0.75)
    assert histogram_quantile(0.95, after, after) is None


@pytest.mark.integration
def test_smoke_load_run_has_no_failures_and_a_well_formed_summary(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1")})  # type: ignore[attr-defined]
    with ServerThread(create_app(settings)) as api:
        result = CliRunner().invoke(app, [
            "loadtest", "--host", api.url, "--users", "4", "--spawn-rate", "4", "--duration", "8s",
            "--think", "0.05,0.2", "--batch-share", "0.2", "--slo-error-rate", "0", "--out", str(tmp_path),
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "error_rate", "requests"):
        assert isinstance(summary[key], int | float), key
    assert summary["requests"] > 10 and summary["error_rate"] == 0
    assert {"invoice", "receipt", "batch"} <= set(summary["by_task"])
    assert summary["by_task"]["invoice"]["default"]["requests"] > 0
    assert summary["server_p95_ms"] is not None and summary["slo"]["missed"] == []
    assert (tmp_path / "locust.html").is_file() and (tmp_path / "locust_stats.csv").is_file()


@pytest.mark.integration
def test_wrong_answers_count_as_failures_and_fail_the_slo(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from loadtest.mock_upstream import Reply

    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1", max_attempts=1)})  # type: ignore[attr-defined]
    upstream.enqueue(*(Reply(content="not json") for _ in range(10_000)))  # every answer is broken
    with ServerThread(create_app(settings)) as api:
        result = CliRunner().invoke(app, [
            "loadtest", "--host", api.url, "--users", "2", "--spawn-rate", "2", "--duration", "4s",
            "--think", "0.05,0.1", "--slo-error-rate", "0.01", "--out", str(tmp_path),
        ])  # fmt: skip
    assert result.exit_code == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["error_rate"] == 1.0 and summary["slo"]["missed"]


@pytest.mark.integration
def test_step_mode_with_a_worker_process_finds_capacity_and_plots(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1")})  # type: ignore[attr-defined]
    with ServerThread(create_app(settings)) as api:
        result = CliRunner().invoke(app, [
            "loadtest", "--host", api.url, "--step-users", "1,3", "--duration", "4s", "--think", "0.05,0.1",
            "--slo-p95-ms", "5000", "--workers", "1", "--out", str(tmp_path),
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [s["users"] for s in steps["steps"]] == [1, 3]
    assert all(s["requests"] > 0 and s["within_slo"] for s in steps["steps"])
    assert steps["capacity_requests_per_s"] == max(s["requests_per_s"] for s in steps["steps"])
    assert (tmp_path / "latency_vs_load.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_soak_under_injected_faults_loses_nothing(tmp_path: Path) -> None:
    from loadtest.soak import soak

    chaos = {"500": 0.08, "429": 0.04, "hang": 0.02, "reset": 0.03, "broken": 0.03}
    r = soak("15s", users=6, chaos=chaos, out=tmp_path)
    assert r["requests"] > 20
    assert r["books_balance"], (r["requests"], r["service_responses"], r["service_outcomes"])  # counted once each
    assert r["upstream_calls"] > r["requests"]  # faults were injected and retried
    assert r["error_rate"] <= 0.05  # retries + a fallback chain absorb a ~20% upstream fault rate
    assert (tmp_path / "soak.json").is_file() and (tmp_path / "locust_stats.csv").is_file()
