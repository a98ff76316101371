"""The grammar guard against the real vLLM server: a schema whose grammar compiles slowly in xgrammar (nested
bounded repetition, every bound at most 100) never holds the engine on the default limits, and with those
limits off the one-token probe runs out of its budget and the schema degrades to JSON mode, counted."""

from __future__ import annotations

import httpx
import pytest

from service.metrics import sample
from tests.vllm.conftest import Stack

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

# 20,000 units once unrolled: 12 s to compile with xgrammar on the 2-core EPYC, 0.07 s for [a-z]{0,1000}.
SLOW = {
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": "^(([a-z]{1,100}[0-9]{1,100}){1,100})$"}},
    "required": ["code"],
}
TEXT = "Reference code: abc123"


def extract(stack: Stack, backend: str) -> httpx.Response:
    body = {"text": TEXT, "schema": SLOW, "backend": backend, "options": {"max_attempts": 2}}
    return httpx.post(f"{stack.service_url}/v1/extract", json=body, timeout=300)


def count(stack: Stack, name: str, **labels: str) -> float:
    return sample(stack.app.state.extraction.metrics.registry, name, **labels)  # type: ignore[attr-defined]


def test_a_slow_grammar_is_never_sent_on_the_default_limits(stack: Stack) -> None:
    response = extract(stack, "local-prompted")
    assert response.status_code in (200, 422), response.text  # 422: the small model missed the pattern
    if response.status_code == 200:
        assert response.json()["structured_output"] == "json_object"
    assert count(stack, "extraction_structured_output_degraded_total", backend="local-prompted", task="adhoc") >= 1
    assert count(stack, "extraction_grammar_probes_total", backend="local-prompted", outcome="slow") == 0


def test_with_static_limits_off_the_probe_budget_degrades_it_counted(stack: Stack) -> None:
    first = extract(stack, "guarded")
    assert first.status_code in (200, 422), first.text
    assert count(stack, "extraction_grammar_probes_total", backend="guarded", outcome="slow") == 1
    if first.status_code == 200:
        assert first.json()["structured_output"] == "json_object"
    second = extract(stack, "guarded")  # decided: no second probe, no second wait
    assert second.status_code in (200, 422), second.text
    assert count(stack, "extraction_grammar_probes_total", backend="guarded", outcome="slow") == 1
    assert count(stack, "extraction_structured_output_degraded_total", backend="guarded", task="adhoc") == 2
