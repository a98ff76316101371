"""The OpenAI-compatible backend over real loopback HTTP: what it sends, and every answer and fault typed."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends import BackendRequest, Endpoint, create_backend
from backends.errors import (
    BackendNotConfigured,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)
from backends.openai_compat import OpenAIBackend, _env_proxy, parse_retry_after
from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from tests.conftest import free_port

Make = Callable[..., tuple[OpenAIBackend, list[httpx2.Request]]]
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


Handler = Callable[[httpx2.Request], httpx2.Response]


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., tuple[OpenAIBackend, list[httpx2.Request]]]]:
    """A backend pointed at a real loopback HTTP server whose answers come from `handler`."""
    servers: list[ServerThread] = []
    backends: list[OpenAIBackend] = []

    def factory(handler: Handler, **cfg: Any) -> tuple[OpenAIBackend, list[httpx2.Request]]:
        seen: list[httpx2.Request] = []

        async def app(request: Request) -> Response:
            recorded = httpx2.Request(
                request.method, str(request.url), headers=request.headers.raw, content=await request.body()
            )
            seen.append(recorded)
            answer = handler(recorded)
            return Response(answer.content, status_code=answer.status_code, headers=dict(answer.headers))

        server = ServerThread(Starlette(routes=[Route("/v1/{path:path}", app, methods=["GET", "POST"])]))
        servers.append(server.__enter__())
        config = Endpoint(name="b", base_url=f"{server.url}/v1", model="m", api_key_env="TEST_KEY", **cfg)
        backends.append(OpenAIBackend(config))
        return backends[-1], seen

    yield factory
    for backend in backends:
        await backend.aclose()
    for server in servers:
        server.__exit__()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-secret")


def request(**kw: Any) -> BackendRequest:
    return BackendRequest(messages=[{"role": "user", "content": "hi"}], schema=SCHEMA, **kw)


async def test_sends_json_schema_and_reads_usage(make: Make) -> None:
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


async def test_vllm_kind_uses_max_tokens_and_json_object_mode(make: Make) -> None:
    backend, seen = make(lambda r: httpx2.Response(200, json=completion()), kind="vllm")
    await backend.complete(request(mode="json_object"))
    body = json.loads(seen[0].content)
    assert body["max_tokens"] == 512 and body["response_format"] == {"type": "json_object"}
    await backend.complete(request(mode="none"))
    assert "response_format" not in json.loads(seen[1].content)


@pytest.mark.parametrize(("kind", "field"), [("vllm", "repetition_penalty"), ("openai", None)])
async def test_a_repetition_penalty_is_sent_under_the_engines_name_and_not_to_openai(
    make: Make, kind: str, field: str | None
) -> None:
    backend, seen = make(lambda r: httpx2.Response(200, json=completion()), kind=kind)
    await backend.complete(request(repetition_penalty=1.1))
    await backend.complete(request())
    penalised, plain = (json.loads(s.content) for s in seen)
    names = {"repetition_penalty", "repeat_penalty", "frequency_penalty", "presence_penalty"}
    assert {k: v for k, v in penalised.items() if k in names} == ({field: 1.1} if field else {})
    assert not names & set(plain)  # unset: the engine's own default


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
async def test_status_codes_become_typed_errors(make: Make, status: int, headers: dict[str, str], error: type) -> None:
    backend, seen = make(lambda r: httpx2.Response(status, headers=headers, json={"error": {"message": "nope"}}))
    with pytest.raises(error) as info:
        await backend.complete(request())
    assert len(seen) == 1  # the client itself never retries
    if status == 429:
        assert info.value.retry_after_s == 7
    if status == 401:
        assert "api_key_env" in str(info.value)


async def test_transport_faults_become_typed_errors(upstream: MockUpstream) -> None:
    url = f"{upstream.url}/v1"  # type: ignore[attr-defined]
    backend = OpenAIBackend(Endpoint(name="b", base_url=url, model="m", api_key_env="TEST_KEY"))
    release = threading.Event()
    upstream.enqueue(Reply(content="{}", hold=release), Reply(reset=True))
    try:
        with pytest.raises(UpstreamTimeout, match="timed out after 0.3 s"):
            await backend.complete(request(timeout_s=0.3))
    finally:
        release.set()
    with pytest.raises(UpstreamConnectionError, match="connection lost"):
        await backend.complete(request())  # headers sent, then the connection dropped mid-body
    refused = OpenAIBackend(Endpoint(name="b", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m",
                                          api_key_env="TEST_KEY"))  # fmt: skip
    with pytest.raises(UpstreamConnectionError, match="cannot reach upstream"):
        await refused.complete(request())
    for b in (backend, refused):
        await b.aclose()


async def test_non_json_body_is_a_bad_response(make: Make) -> None:
    backend, _ = make(
        lambda r: httpx2.Response(200, content=b'{"id": "c1", "choi', headers={"content-type": "application/json"})
    )
    with pytest.raises(UpstreamBadResponse, match="unreadable response"):
        await backend.complete(request())
    backend, _ = make(lambda r: httpx2.Response(200, json={**completion(), "choices": []}))
    with pytest.raises(UpstreamBadResponse, match="no choices"):
        await backend.complete(request())


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"choices": {"a": 1}}, "choices is not a list"),  # an object where the list goes
        ({"choices": [1]}, "choices[0] is not an object"),
        ({"choices": ["x"]}, "choices[0] is not an object"),
        ({"choices": [{"message": "text"}]}, "choices[0].message is not an object"),
        ({"choices": [{"message": {"content": ["a"]}}]}, "message.content is not a string"),
        ([1, 2], "the body is a JSON list, not an object"),
    ],
)
async def test_a_body_that_is_json_but_no_chat_completion_is_a_bad_response(make: Make, body: Any, says: str) -> None:
    backend, _ = make(lambda r: httpx2.Response(200, json=body))
    with pytest.raises(UpstreamBadResponse, match="not a chat completion") as e:
        await backend.complete(request())
    assert says in str(e.value) and "attribute" not in str(e.value)  # no Python error text for the caller


async def test_odd_model_and_finish_reason_fields_are_not_passed_on(make: Make) -> None:
    odd = {**completion(), "model": {"x": 1}}
    odd["choices"][0]["finish_reason"] = ["length"]
    backend, _ = make(lambda r: httpx2.Response(200, json=odd))
    response = await backend.complete(request())
    assert (response.text, response.model, response.finish_reason) == ('{"a":"x"}', "m", None)


async def test_missing_key_names_the_variable(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_KEY")
    backend, _ = make(lambda r: httpx2.Response(200, json=completion()))
    with pytest.raises(BackendNotConfigured, match="TEST_KEY"):
        await backend.complete(request())


async def test_openai_kind_honours_standard_env_vars(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, seen = make(lambda r: httpx2.Response(200, json=completion()))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("OPENAI_BASE_URL", backend.base_url() + "/")  # a trailing slash is fine
    openai = create_backend(Endpoint(name="openai", model="gpt-4o-mini"))
    assert isinstance(openai, OpenAIBackend)
    await openai.complete(request())
    assert seen[0].headers["authorization"] == "Bearer sk-env" and seen[0].headers["openai-organization"] == "org-1"
    assert seen[0].url.path == "/v1/chat/completions"
    await openai.aclose()
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert create_backend(Endpoint(name="openai", model="m")).base_url() == "https://api.openai.com/v1"


def test_vllm_kind_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(Endpoint(name="local", kind="vllm", model="m"))
    assert backend.configured() and backend.base_url() == "http://127.0.0.1:8000/v1"


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "999999"}) == 999999  # the retry policy caps it, not the parser
    assert parse_retry_after({"retry-after": "-5"}) == 0
    for bad in ("inf", "-inf", "nan", "1e400", "Infinity"):
        assert parse_retry_after({"retry-after": bad}) is None, bad
        assert parse_retry_after({"retry-after-ms": bad}) is None, bad
    assert parse_retry_after({"retry-after-ms": "inf", "retry-after": "2"}) == 2


def completion_with_usage(usage: Any) -> dict[str, Any]:
    body = completion(content='{"a":"' + "x" * 38 + '"}')  # 46 characters: estimated at 12 tokens
    if usage is ...:
        del body["usage"]
    else:
        body["usage"] = usage
    return body


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 11, "completion_tokens": 4}, (11, 4)),
        ({"prompt_tokens": 11.0, "completion_tokens": 0}, (11, 0)),  # whole numbers as floats, and zero
        ({"prompt_tokens": -5, "completion_tokens": 4}, (1, 4)),  # each count judged alone: "hi" is 1 token
        ({"prompt_tokens": 11, "completion_tokens": 1e30}, (11, 12)),
        ({"prompt_tokens": 10**30, "completion_tokens": -1}, (1, 12)),
        ({"prompt_tokens": 2.5, "completion_tokens": True}, (1, 12)),
        ({"prompt_tokens": "11", "completion_tokens": None}, (1, 12)),
        ({"prompt_tokens": 11, "completion_tokens": 1200}, (11, 12)),  # over 77 max_output + 2 x 46 bytes + 1024
        ({}, (1, 12)),
        (None, (1, 12)),
        ("lots", (1, 12)),
        (..., (1, 12)),  # no usage at all
    ],
)
async def test_implausible_or_missing_usage_is_estimated_never_trusted(
    make: Make, usage: Any, expected: tuple[int, int]
) -> None:
    backend, _ = make(lambda r: httpx2.Response(200, json=completion_with_usage(usage)))
    response = await backend.complete(request(max_output_tokens=77))
    assert (response.usage.input_tokens, response.usage.output_tokens) == expected
    assert response.text.startswith('{"a":')  # the answer is kept: only the count was wrong


async def test_unknown_model_error_says_what_to_check(make: Make) -> None:
    backend, _ = make(lambda r: httpx2.Response(404, json={"error": {"message": "The model `x` does not exist."}}))
    with pytest.raises(UpstreamRejected, match=f"is model 'm' served at {backend.base_url()}"):
        await backend.complete(request())


def test_proxy_from_the_environment_once_with_no_proxy_and_loopback_exempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert _env_proxy("https://api.openai.com/v1") == "http://proxy.corp:3128"
    assert _env_proxy("http://127.0.0.1:8000/v1") is None  # the local vLLM is never proxied
    monkeypatch.setenv("NO_PROXY", "internal.example, .openai.com")
    assert _env_proxy("https://api.openai.com/v1") is None
    assert _env_proxy("https://api.other.ai/v1") == "http://proxy.corp:3128"
    monkeypatch.setenv("NO_PROXY", "*")
    assert _env_proxy("https://api.other.ai/v1") is None
