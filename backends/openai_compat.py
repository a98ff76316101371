"""The one backend implementation: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, ...)."""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Mapping
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from backends.base import BackendRequest, BackendResponse, Usage
from backends.config import BackendConfig
from backends.errors import (
    BackendError,
    BackendNotConfigured,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)

DEFAULT_VLLM_URL = "http://127.0.0.1:8000/v1"


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or HTTP date); None if absent."""
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
    """Speaks chat completions; a vLLM LoRA adapter is selected by `model=` like any other model."""

    def __init__(self, config: BackendConfig, *, http_client: Any | None = None) -> None:
        self.name = config.name
        self.config = config
        self._http_client = http_client
        self._client: openai.AsyncOpenAI | None = None

    def _api_key(self) -> str:
        env = self.config.api_key_env or ("OPENAI_API_KEY" if self.config.kind == "openai" else None)
        key = os.environ.get(env) if env else None
        if key:
            return key
        if self.config.kind == "vllm" and not self.config.api_key_env:
            return "EMPTY"  # vLLM started without --api-key accepts any value
        raise BackendNotConfigured(
            f"backend {self.name!r} has no API key: set the environment variable {env} "
            f"or point api_key_env at one that holds the key",
            backend=self.name,
        )

    def configured(self) -> bool:
        try:
            self._api_key()
        except BackendNotConfigured:
            return False
        return True

    def _base_url(self) -> str | None:
        if self.config.base_url:
            return self.config.base_url
        if self.config.kind == "vllm":
            return DEFAULT_VLLM_URL
        return os.environ.get("OPENAI_BASE_URL") or None  # None: the openai package's default

    def client(self) -> openai.AsyncOpenAI:
        # Built once per backend and reused: one connection pool, no per-request client creation.
        if self._client is None:
            timeout = openai.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key(),
                base_url=self._base_url(),
                max_retries=0,  # the pipeline's tenacity loop is the only retry loop
                timeout=timeout,
                http_client=self._http_client or default_http_client(timeout),
            )
        return self._client

    def _params(self, request: BackendRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.config.model,
            "messages": request.messages,
            "temperature": request.temperature,
        }
        # OpenAI's newer models reject max_tokens; many compatible servers only know max_tokens.
        tokens_param = "max_completion_tokens" if self.config.kind == "openai" else "max_tokens"
        params[tokens_param] = request.max_output_tokens
        if request.mode == "json_schema" and request.schema is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": request.strict},
            }
        elif request.mode == "json_object":
            params["response_format"] = {"type": "json_object"}
        if request.extra_body:
            params["extra_body"] = request.extra_body
        return params

    async def complete(self, request: BackendRequest) -> BackendResponse:
        started = time.perf_counter()
        params = self._params(request)
        body = {**params, **params.pop("extra_body", {})}
        try:
            # The client's raw `post` with the body we built: `chat.completions.create` would first walk every
            # message and the whole schema through its typed-parameter transform, which measured ~17% of
            # this service's CPU per request against a zero-latency upstream. Same wire format, errors, auth.
            completion = await self.client().post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body=body,
                options={"timeout": request.timeout_s, "security": {"bearer_auth": True}},
            )
        except openai.APIError as e:
            raise self._translate(e) from e
        except ValueError as e:  # a 2xx body that is not JSON
            raise UpstreamBadResponse(f"unreadable response: {e}", backend=self.name) from e
        latency = time.perf_counter() - started
        if not completion.choices:
            raise UpstreamBadResponse("response has no choices", backend=self.name)
        choice = completion.choices[0]
        usage = completion.usage
        return BackendResponse(
            text=choice.message.content or "",
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            model=completion.model or self.config.model,
            finish_reason=choice.finish_reason,
            latency_s=latency,
        )

    def _translate(self, e: openai.APIError) -> BackendError:
        name = self.name
        if isinstance(e, openai.APITimeoutError) and _refused(e):
            return UpstreamConnectionError(f"cannot reach upstream: {_refused(e)}", backend=name)
        if isinstance(e, openai.APITimeoutError):
            return UpstreamTimeout(f"upstream timed out: {e}", backend=name)
        if isinstance(e, openai.APIConnectionError):
            return UpstreamConnectionError(f"cannot reach upstream: {e}", backend=name)
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            detail = _short(e.message)
            if status == 429:
                return UpstreamRateLimited(
                    f"upstream rate limited: {detail}",
                    backend=name,
                    retry_after_s=parse_retry_after(e.response.headers),
                )
            if status >= 500:
                return UpstreamServerError(f"upstream {status}: {detail}", backend=name, status_code=status)
            hint = {
                401: " (check the key in the backend's api_key_env)",
                403: " (check the key in the backend's api_key_env)",
                404: f" (is model {self.config.model!r} served at {self._base_url() or 'the default URL'}?)",
            }.get(status, "")
            return UpstreamRejected(f"upstream {status}: {detail}{hint}", backend=name, status_code=status)
        return UpstreamBadResponse(f"unusable upstream response: {_short(str(e))}", backend=name)

    async def ping(self, timeout_s: float = 2.0) -> None:
        try:
            await self.client().models.list(timeout=timeout_s)
        except openai.APIError as e:
            raise self._translate(e) from e

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def default_http_client(timeout: openai.Timeout) -> Any | None:
    """aiohttp as the transport when installed (the `serve` extra has it): it needs markedly less CPU per
    request than the default pure-Python HTTP stack, which matters at hundreds of requests/s. None: the
    openai package's default client."""
    try:
        return openai.DefaultAioHttpClient(timeout=timeout)
    except RuntimeError:  # openai without the aiohttp extra
        return None


def _refused(error: BaseException) -> str | None:
    """The connection failure behind a 'timeout', if any: the aiohttp transport reports a refused or reset
    connection as a connect timeout, which would send the caller a misleading 504."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return str(cause) or type(cause).__name__
        cause = cause.__cause__ or cause.__context__
    return None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
