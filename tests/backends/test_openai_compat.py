"""The OpenAI-compatible backend against the openai client's own HTTP layer (a MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from backends import BackendConfig, BackendRequest, create_backend
from backends.errors import (
    BackendNotConfigured,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)
from backends.openai_compat import OpenAIBackend, parse_retry_after

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}


def completion(content: str = '{"a":"x"}', finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }


def make(handler: Callable[[httpx2.Request], httpx2.Response], **cfg: Any) -> tuple[OpenAIBackend, list[Any]]:
    seen: list[Any] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return handler(request)

    config = BackendConfig(name="b", base_url="http://upstream.test/v1", model="m", api_key_env="TEST_KEY", **cfg)
    backend = OpenAIBackend(config, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(record)))
    return backend, seen


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-secret")


def request(**kw: Any) -> BackendRequest:
    return BackendRequest(messages=[{"role": "user", "content": "hi"}], schema=SCHEMA, **kw)


async def test_sends_json_schema_and_reads_usage() -> None:
    backend, seen = make(lambda r: httpx2.Response(200, json=completion()))
    response = await backend.complete(request(max_output_tokens=77))
    body = json.loads(seen[0].content)
    assert body["model"] == "m"
    assert body["max_completion_tokens"] == 77
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "extraction", "schema": SCHEMA, "strict": True},
    }
    assert seen[0].headers["authorization"] == "Bearer sk-secret"
    assert (response.text, response.model, response.finish_reason) == ('{"a":"x"}', "served-model", "stop")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 4)


async def test_vllm_kind_uses_max_tokens_and_json_object_mode() -> None:
    backend, seen = make(lambda r: httpx2.Response(200, json=completion()), kind="vllm")
    await backend.complete(request(mode="json_object"))
    body = json.loads(seen[0].content)
    assert body["max_tokens"] == 512 and body["response_format"] == {"type": "json_object"}
    await backend.complete(request(mode="none"))
    assert "response_format" not in json.loads(seen[1].content)


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (429, {"retry-after": "7"}, UpstreamRateLimited),
        (500, {}, UpstreamServerError),
        (503, {}, UpstreamServerError),
        (400, {}, UpstreamRejected),
        (401, {}, UpstreamRejected),
        (404, {}, UpstreamRejected),
    ],
)
async def test_status_codes_become_typed_errors(status: int, headers: dict[str, str], error: type) -> None:
    backend, seen = make(lambda r: httpx2.Response(status, headers=headers, json={"error": {"message": "nope"}}))
    with pytest.raises(error) as info:
        await backend.complete(request())
    assert len(seen) == 1  # the client itself never retries
    if status == 429:
        assert info.value.retry_after_s == 7
    if status == 401:
        assert "api_key_env" in str(info.value)


async def test_transport_faults_become_typed_errors() -> None:
    def timeout(r: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("slow", request=r)

    def refused(r: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=r)

    for handler, error in ((timeout, UpstreamTimeout), (refused, UpstreamConnectionError)):
        backend, _ = make(handler)
        with pytest.raises(error):
            await backend.complete(request())


async def test_non_json_body_is_a_bad_response() -> None:
    backend, _ = make(
        lambda r: httpx2.Response(200, content=b'{"id": "c1", "choi', headers={"content-type": "application/json"})
    )
    with pytest.raises(UpstreamBadResponse, match="unreadable response"):
        await backend.complete(request())
    backend, _ = make(lambda r: httpx2.Response(200, json={**completion(), "choices": []}))
    with pytest.raises(UpstreamBadResponse, match="no choices"):
        await backend.complete(request())


async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_KEY")
    backend, _ = make(lambda r: httpx2.Response(200, json=completion()))
    with pytest.raises(BackendNotConfigured, match="TEST_KEY"):
        await backend.complete(request())


async def test_openai_kind_honours_standard_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://compatible.test/v1")
    backend = create_backend(BackendConfig(name="openai", model="gpt-4o-mini"))
    assert isinstance(backend, OpenAIBackend)
    client = backend.client()
    assert str(client.base_url).startswith("http://compatible.test/v1")
    assert client.api_key == "sk-env"
    assert client.max_retries == 0


def test_vllm_kind_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(BackendConfig(name="local", kind="vllm", model="m"))
    assert str(backend.client().base_url).startswith("http://127.0.0.1:8000/v1")


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None


async def test_unknown_model_error_says_what_to_check() -> None:
    backend, _ = make(lambda r: httpx2.Response(404, json={"error": {"message": "The model `x` does not exist."}}))
    with pytest.raises(UpstreamRejected, match="is model 'm' served at http://upstream.test/v1"):
        await backend.complete(request())
