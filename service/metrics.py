"""Prometheus metrics, exactly the names in DESIGN.md (plus repair/degrade counters). Seconds and USD."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Request latency spans fast hosted calls to multi-re-ask CPU generations.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120)


class Metrics:
    """All extraction_* metrics on one registry (a fresh one per app, so tests do not share counters)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "extraction_requests", "Extraction requests by outcome.", ["task", "backend", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "extraction_request_duration_seconds",
            "Whole-request latency, re-asks and retries included.",
            ["task", "backend"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.backend_duration = Histogram(
            "extraction_backend_duration_seconds",
            "Latency of one call to a backend.",
            ["backend"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "extraction_attempts", "Calls to backends, by why the call was made.", ["backend", "reason"], registry=r
        )
        self.tokens = Counter(
            "extraction_tokens",
            "Tokens billed, every attempt; direction input, output, and cached_input (the part of input the engine "
            "reported served from its prefix cache).",
            ["backend", "task", "direction"],
            registry=r,
        )
        self.cost = Counter("extraction_cost_usd", "USD spent, every attempt.", ["backend", "task"], registry=r)
        self.inflight = Gauge(
            "extraction_inflight_requests", "Requests being processed.", registry=r, multiprocess_mode="livesum"
        )
        self.schema_valid = Counter(
            "extraction_schema_valid", "Answers that validated.", ["task", "backend", "first_attempt"], registry=r
        )
        self.field_null = Counter(
            "extraction_field_null", "Top-level fields answered null or empty.", ["task", "field"], registry=r
        )
        self.grounding = Counter(
            "extraction_grounding",
            "Grounded values checked against the text: printed (found as given), snapped (replaced by the nearest "
            "printed value), not_found (left as given), reverted (snapping made the answer invalid), skipped (the "
            "check ran past limits.validation_budget_s; the answer went out unchecked), error (a fault in the "
            "check, logged; the answer went out unchecked).",
            ["task", "backend", "field", "outcome"],
            registry=r,
        )
        self.json_repairs = Counter(
            "extraction_json_repairs", "Outputs that needed json-repair to parse.", ["backend"], registry=r
        )
        self.grammar_probes = Counter(
            "extraction_grammar_probes",
            "One-token probes sent with a schema new to a backend, by outcome: ok, slow (past "
            "structured_limits.compile_budget_s), rejected (the engine refused the grammar), error (undecided).",
            ["backend", "outcome"],
            registry=r,
        )
        self.structured_degraded = Counter(
            "extraction_structured_output_degraded",
            "Requests sent in JSON mode because the backend's engine cannot enforce the schema.",
            ["backend", "task"],
            registry=r,
        )

        self.fallbacks = Counter(
            "extraction_fallbacks",
            "Requests handed to the next backend of a fallback chain, by why.",
            ["from_backend", "to_backend", "reason"],
            registry=r,
        )
        self.pii_findings = Counter(
            "extraction_pii_findings",
            "PII found in outputs, by kind and what the policy did.",
            ["task", "kind", "action"],
            registry=r,
        )
        self.concurrency_limit = Gauge(
            "extraction_backend_concurrency_limit",
            "Calls a backend may run at once now (moves with adaptive_concurrency).",
            ["backend"],
            registry=r,
            multiprocess_mode="max",
        )
        self.circuit_state = Gauge(
            "extraction_circuit_state",
            "Circuit breaker per backend: 0 closed, 1 open, 2 half-open.",
            ["backend"],
            registry=r,
            multiprocess_mode="max",
        )

    def rejected_before_pipeline(self, requests: int = 1) -> None:
        """Requests turned away before a task or backend is known (bad body, auth, rate): outcome rejected."""
        self.requests.labels("-", "-", "rejected").inc(requests)

    def render(self) -> bytes:
        """The text exposition; aggregated across workers when PROMETHEUS_MULTIPROC_DIR is set."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return generate_latest(combined)
        return generate_latest(self.registry)


def sample(registry: CollectorRegistry, name: str, **labels: Any) -> float:
    """A sample's current value (0 if absent): for tests and the dashboards' checks."""
    value = registry.get_sample_value(name, {k: str(v) for k, v in labels.items()})
    return value or 0.0
