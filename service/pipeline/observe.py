"""Observation of a finished request: one count in extraction_requests_total whatever the outcome, its
latency, one log line, and (opt-in) the request log. Never the text or the output in the log line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from service.metrics import Metrics
from service.pii import PiiPolicy, scan
from service.pipeline.spend import Spend
from service.request_log import RequestLog

log = structlog.get_logger("extraction")
LOG_POLICY = PiiPolicy(action="redact")


@dataclass(slots=True)
class Trace:
    """Who handled the request so far: the labels its metrics and log line get. Unknown names stay "-" (a
    bad request never becomes a label value); `backend` follows the fallback chain to whoever ran last."""

    task: str = "-"
    backend: str = "-"


class Observer:
    def __init__(self, metrics: Metrics, request_log: RequestLog | None, redact_pii: bool) -> None:
        self.metrics = metrics
        self.request_log = request_log
        self.redact_pii = redact_pii

    def started(self) -> None:
        self.metrics.inflight.inc()

    def finished(
        self,
        trace: Trace,
        outcome: str,
        spend: Spend,
        elapsed_s: float,
        request_id: str | None,
        text: str,
        output: Any,
    ) -> None:
        m = self.metrics
        m.inflight.dec()
        m.requests.labels(trace.task, trace.backend, outcome).inc()
        if outcome != "rejected":
            m.request_duration.labels(trace.task, trace.backend).observe(elapsed_s)
        log.info(
            "extraction",
            request_id=request_id,
            task=trace.task,
            backend=trace.backend,
            outcome=outcome,
            latency_ms=round(elapsed_s * 1000, 1),
            **spend.log_fields(),
        )
        if self.request_log is not None and outcome != "rejected":
            if self.redact_pii:
                text, output = scan(text, LOG_POLICY)[0], scan(output, LOG_POLICY)[0]
            self.request_log.write({
                "ts": time.time(), "request_id": request_id, "task": trace.task, "backend": trace.backend,
                "outcome": outcome, "text": text, "output": output, "usage": spend.details()["usage"],
                "latency_ms": round(elapsed_s * 1000, 1),
            })  # fmt: skip
