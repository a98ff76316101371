"""The one backend implementation: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, ...)."""

from __future__ import annotations

import email.utils
import math
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import structlog

from backends.base import BackendRequest, BackendResponse, Usage
from backends.config import LOCAL_KINDS, Endpoint
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
from backends.profiles import repetition_penalty_param

DEFAULT_VLLM_URL = "http://127.0.0.1:8000/v1"
DEFAULT_LLAMACPP_URL = "http://127.0.0.1:8001/v1"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
USER_AGENT = "extraction-service/0.1"
SLACK_TOKENS = 1024  # above what a reply's usage could plausibly count: chat template, hidden system prompt

log = structlog.get_logger("extraction.backend")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or HTTP date); None if absent or not a
    finite number (`inf`, `nan`, garbage). Not capped here: the caller's retry policy caps it."""
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            if math.isfinite(seconds := float(ms) / 1000):
                return max(0.0, seconds)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
    """Speaks chat completions over HTTP; a vLLM LoRA adapter is selected by `model=` like any other model.

    The wire protocol is small (one POST, one GET), so it is spoken directly with aiohttp and orjson: through
    the openai SDK (request building, auth wrapper, typed response models) one worker served 524 requests/s
    against a zero-latency upstream, spoken directly 904 (README, Performance). One session (connection pool)
    per backend; the client never retries (the pipeline's tenacity loop does).
    """

    def __init__(self, config: Endpoint) -> None:
        self.name = config.name
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None

    def _api_key(self) -> str:
        env = self.config.api_key_env or ("OPENAI_API_KEY" if self.config.kind == "openai" else None)
        key = os.environ.get(env) if env else None
        if key:
            return key
        if self.config.kind in LOCAL_KINDS and not self.config.api_key_env:
            return "EMPTY"  # a local server started without --api-key accepts any value
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

    def base_url(self) -> str:
        if self.config.base_url:
            url = self.config.base_url
        elif self.config.kind == "vllm":
            url = DEFAULT_VLLM_URL
        elif self.config.kind == "llamacpp":
            url = DEFAULT_LLAMACPP_URL
        else:
            url = os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL  # as the openai client does
        return url.rstrip("/")

    def session(self) -> aiohttp.ClientSession:
        # Built once per backend (inside the running loop) and reused: no per-request client or TLS setup.
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self._api_key()}", "User-Agent": USER_AGENT}
            if self.config.kind == "openai":
                for env, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
                    if value := os.environ.get(env):
                        headers[header] = value
            self._session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),  # the pipeline bounds concurrency
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
            self._proxy = _env_proxy(self.base_url())
        return self._session

    def _body(self, request: BackendRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": request.messages,
            "temperature": request.temperature,
        }
        # OpenAI's newer models reject max_tokens; many compatible servers only know max_tokens.
        tokens_param = "max_completion_tokens" if self.config.kind == "openai" else "max_tokens"
        body[tokens_param] = request.max_output_tokens
        if request.mode == "json_schema" and request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": request.strict},
            }
        elif request.mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        if request.repetition_penalty is not None and (param := repetition_penalty_param(self.config.kind)):
            body[param] = request.repetition_penalty
        if request.extra_body:
            body.update(request.extra_body)
        return body

    def _timeout(self, total_s: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total_s, sock_connect=min(total_s, self.config.connect_timeout_s))

    async def _send(
        self, method: str, path: str, timeout_s: float, body: bytes | None = None, base: str | None = None
    ) -> bytes:
        """The raw body of a 2xx answer; error statuses and transport faults become typed errors."""
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with self.session().request(
                method,
                (base or self.base_url()) + path,
                data=body,
                headers=headers,
                timeout=self._timeout(timeout_s),
                proxy=self._proxy,
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise self._status_error(response.status, raw, response.headers)
                return raw
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise UpstreamTimeout(f"upstream timed out after {timeout_s:g} s", backend=self.name) from e
        except aiohttp.ClientConnectorError as e:
            raise UpstreamConnectionError(f"cannot reach upstream: {e}", backend=self.name) from e
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            raise UpstreamConnectionError(f"connection lost: {_short(str(e))}", backend=self.name) from e
        except aiohttp.ClientError as e:
            raise UpstreamBadResponse(f"unusable upstream response: {_short(str(e))}", backend=self.name) from e

    async def _llamacpp_fields(self, timeout_s: float) -> dict[str, Any]:
        """llama-server has one model; an adapter is applied per request by id (`lora`), the backend's `model`
        naming it (the server lists its adapters at /lora-adapters, files named NAME-DIGEST.gguf). A `model` that
        names no adapter is the base model. Every loaded adapter's scale is sent, the named one's 1 and the
        others' 0: a request's `lora` list only overrides the server's own scales, and those are 1 for every
        adapter loaded even with `--lora-init-without-apply` (llama-server as llama-cpp-python 0.3.36 vendors
        it: `lora: []` ran the base model with all four shipped adapters added). Prompt-cache reuse is the
        server's setting (llamacpp.cache_prompt, on by default), not overridden per request; llama-server does not
        reuse a prefix cached under other adapter scales (measured: 0 cached tokens after a change).

        The ids are looked up for every request (one loopback GET, about a millisecond): they are positions in the
        server's start command, so a restart by `load-adapter`/`unload-adapter` may renumber them, and a kept id
        could apply another adapter without any error."""
        root = self.base_url().removesuffix("/v1")
        raw = await self._send("GET", "/lora-adapters", min(timeout_s, 5.0), base=root)
        try:
            ids = llamacpp_lora_ids(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UpstreamBadResponse(f"unreadable /lora-adapters answer: {e}", backend=self.name) from e
        model = self.config.model
        by_id = sorted(ids.items(), key=lambda named: named[1])
        return {"lora": [{"id": i, "scale": 1.0 if name == model else 0.0} for name, i in by_id]}

    async def complete(self, request: BackendRequest) -> BackendResponse:
        started = time.perf_counter()
        body = self._body(request)
        if self.config.kind == "llamacpp":
            body.update(await self._llamacpp_fields(request.timeout_s))
        payload = orjson.dumps(body)
        raw = await self._send("POST", "/chat/completions", request.timeout_s, payload)
        try:
            completion = orjson.loads(raw)
        except orjson.JSONDecodeError as e:  # a 2xx body that is not JSON (truncated, HTML, ...)
            raise UpstreamBadResponse(f"unreadable response: {e}", backend=self.name) from e
        latency = time.perf_counter() - started
        try:
            if not isinstance(completion, dict):
                raise TypeError(f"the body is a JSON {type(completion).__name__}, not an object")
            choices = completion.get("choices")
            if not choices:
                raise UpstreamBadResponse("response has no choices", backend=self.name)
            if not isinstance(choices, list):
                raise TypeError("choices is not a list")
            choice = choices[0]
            if not isinstance(choice, dict):
                raise TypeError("choices[0] is not an object")
            message = choice.get("message") or {}
            if not isinstance(message, dict):
                raise TypeError("choices[0].message is not an object")
            text = message.get("content") or ""
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
            reason, model = choice.get("finish_reason"), completion.get("model")
            # llama-server names its GGUF file whatever adapter it applied: the adapter is the model
            if self.config.kind == "llamacpp" or not isinstance(model, str) or not model:
                model = self.config.model
            return BackendResponse(
                text=text,
                usage=self._usage(completion.get("usage"), request, len(payload), text),
                model=model,
                finish_reason=reason if isinstance(reason, str) else None,
                latency_s=latency,
            )
        except (AttributeError, TypeError, ValueError) as e:  # JSON, but not a chat completion
            raise UpstreamBadResponse(f"not a chat completion: {e}", backend=self.name) from e

    def _usage(self, reported: Any, request: BackendRequest, sent_bytes: int, text: str) -> Usage:
        """The upstream's token counts where plausible, else estimated at 4 characters per token (logged).

        Plausible: a whole number from 0 to 2 tokens per byte we sent + 1,024 (input), or to max_output_tokens
        + 2 per byte of the answer + 1,024 (output). The answer is good and already paid for, so a bad count is
        no reason to fail or retry the call (an upstream that never counts would fail every one); but a
        negative, 1e30 or missing count must never reach the token and cost counters or a key's budget.
        """
        fields = reported if isinstance(reported, dict) else {}
        prompt_chars = sum(len(m.get("content") or "") for m in request.messages)
        answer_bytes = len(text.encode("utf-8", "replace"))
        checks = {
            "prompt_tokens": (2 * sent_bytes + SLACK_TOKENS, prompt_chars),
            "completion_tokens": (request.max_output_tokens + 2 * answer_bytes + SLACK_TOKENS, len(text)),
        }
        counts: dict[str, int] = {}
        wrong: dict[str, str] = {}
        for field, (bound, chars) in checks.items():
            value = fields.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= bound:
                if value == int(value):
                    counts[field] = int(value)
                    continue
            counts[field] = math.ceil(chars / 4)
            wrong[field] = _short(repr(value), 60)
        if wrong:
            log.warning("upstream_usage_estimated", backend=self.name, reported=wrong, estimated=counts)
        details = fields.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        plausible = isinstance(cached, int) and not isinstance(cached, bool) and 0 <= cached <= counts["prompt_tokens"]
        return Usage(counts["prompt_tokens"], counts["completion_tokens"], cached if plausible else 0)  # type: ignore[arg-type]

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> BackendError:
        name = self.name
        detail = _error_message(raw)
        if status == 429:
            return UpstreamRateLimited(
                f"upstream rate limited: {detail}", backend=name, retry_after_s=parse_retry_after(headers)
            )
        if status >= 500:
            return UpstreamServerError(f"upstream {status}: {detail}", backend=name, status_code=status)
        hint = {
            401: " (check the key in the backend's api_key_env)",
            403: " (check the key in the backend's api_key_env)",
            404: f" (is model {self.config.model!r} served at {self.base_url()}?)",
        }.get(status, "")
        return UpstreamRejected(f"upstream {status}: {detail}{hint}", backend=name, status_code=status)

    async def count_tokens(self, payload: dict[str, Any], timeout_s: float = 10.0) -> int:
        """Tokens as the server counts them: vLLM's `POST /tokenize` (at the server root, beside `/v1`), with
        `prompt` or chat `messages`. Other servers answer 404: an UpstreamRejected like any 4xx."""
        root = self.base_url().removesuffix("/v1")
        body = orjson.dumps({"model": self.config.model, **payload})
        raw = await self._send("POST", "/tokenize", timeout_s, body, base=root)
        try:
            return int(orjson.loads(raw)["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UpstreamBadResponse(f"unreadable /tokenize answer: {e}", backend=self.name) from e

    async def ping(self, timeout_s: float = 2.0) -> None:
        await self._send("GET", "/models", timeout_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _env_proxy(url: str) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY for `url` unless NO_PROXY (or loopback) exempts its host, as HTTP clients read
    them; looked up once per session (aiohttp's `trust_env` does it on every request: a third of this
    service's CPU at full load)."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or host in ("localhost", "127.0.0.1", "::1"):
        return None
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _error_message(raw: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the body's start."""
    try:
        body = orjson.loads(raw)
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error or body.get("message")  # vLLM: top level
        if message:
            return _short(str(message))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        pass
    return _short(raw.decode("utf-8", "replace").strip()) or "(empty body)"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def llamacpp_lora_ids(listing: Any) -> dict[str, int]:
    """{name: id} from llama-server's /lora-adapters answer ([{id, path, scale}, ...]); a file NAME-DIGEST.gguf
    (16 hex digits, as `extraction llamacpp up` converts them) or NAME.gguf is named NAME."""
    ids: dict[str, int] = {}
    for entry in listing:
        stem = str(entry["path"]).replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".gguf")
        name, _, digest = stem.rpartition("-")
        is_digest = len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)
        ids[name if name and is_digest else stem] = int(entry["id"])
    return ids
